"""One-shot or sequential: does scoring each layer on the already pruned network change the ranking of the criteria?

Pruned one channel group at a time, DISCEDIT is level with the other criteria on ResNet-20
(``pruning_layer_sensitivity.py --arch resnet20``), yet over the whole network it trails BN scale by several
points (``accuracy_fashion_mnist.py --arch resnet20``). One difference between the two: the whole-network benchmark
scores every layer once on the dense network and prunes all of them together, so a layer's scores were measured on
inputs its pruned predecessors no longer produce. The authors' released script prunes layer by layer in forward
order, scoring each layer on the already pruned model (METHODS.md). This script runs both protocols for every
criterion, on the same network, data, seeds and widths:

- **one-shot**: every layer scored on the trained network, all groups pruned together, then BatchNorm recalibrated;
- **sequential**: for each channel group in forward order, its layers are scored on the current (already pruned,
  recalibrated) network, the group is pruned, and BatchNorm is recalibrated before the next group.

Every group loses the same fraction of its channels (uniform channel sparsity, so every arm has the same widths and
parameter count); no fine-tuning. Test accuracy on all 10,000 Fashion-MNIST test images, mean ± std over seeds
(train seed and calibration sample). Writes ``table.md`` and ``results.json`` to ``--out``.

    python benchmarks/diagnostics/pruning_sequential.py [--arch resnet20|vgg11] [--fractions 0.3 0.5 0.7] [--seeds 3]
"""

from __future__ import annotations

import sys

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: _common and the headline scripts
from _common import RESULTS, add_pruning_arguments, ordered_groups, pruning_setup
from accuracy_fashion_mnist import ARMS, arm_scores, sample_batches, test_acc, train_base

from lightning_edit.discedit import prunable_layers, prune_channels, recalibrate_batchnorm

LABELS = ["DISCEDIT (conv output)", "DISCEDIT (after BN+ReLU)", "L1 (filter)", "BN scale (torch-pruning)", "random"]
PROTOCOLS = ["one-shot", "sequential"]


def mean_std(v: list[float]) -> tuple[float, float]:
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def one_shot(base: torch.nn.Module, label: str, fraction: float, calib, recal, seed: int, example) -> torch.nn.Module:
    model = copy.deepcopy(base)
    layers = prunable_layers(model)
    prune_channels(model, example, arm_scores(model, layers, label, calib, seed, example), fraction, layers,
                   min_channels=1)
    recalibrate_batchnorm(model, recal)
    return model


def sequential(base: torch.nn.Module, label: str, fraction: float, calib, recal, seed: int, example,
               groups: list[list[str]]) -> torch.nn.Module:
    model = copy.deepcopy(base)
    for names in groups:
        current = prunable_layers(model)
        layers = {n: current[n] for n in names}
        prune_channels(model, example, arm_scores(model, layers, label, calib, seed, example), fraction, layers,
                       min_channels=1)
        recalibrate_batchnorm(model, recal)
    return model


def main() -> None:
    ap = argparse.ArgumentParser()
    add_pruning_arguments(ap)
    ap.add_argument("--arch", choices=["vgg11", "resnet20"], default="resnet20", help="resnet20: option-B shortcuts")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.3, 0.5, 0.7],
                    help="fraction of every group's channels removed")
    ap.add_argument("--arms", nargs="+", default=LABELS, choices=[k for k, v in ARMS.items() if v[0] != "taylor"])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    tag = f"w{args.width:g}" if args.arch == "vgg11" else args.arch
    out = Path(args.out or RESULTS / f"pruning_sequential_{tag}")
    network = f"VGG-11, width {args.width:g}" if args.arch == "vgg11" else "ResNet-20, option-B shortcuts"
    dm, side, x_test, y_test, example = pruning_setup(args.train_subset)
    results: dict[str, list[float]] = {}
    params: dict[str, int] = {}
    dense_accs: list[float] = []

    def write() -> None:
        lines = [f"Dense test accuracy {mean_std(dense_accs)[0]:.3f} ± {mean_std(dense_accs)[1]:.3f} ({network}, "
                 f"{len(dense_accs)} seeds). Uniform channel sparsity (every group loses the same fraction), "
                 "BN-recalibrated, no fine-tuning.", "",
                 "| channels removed | parameters left | protocol | " + " | ".join(args.arms) + " |",
                 "|---|---|---|" + "---|" * len(args.arms)]
        for fraction in args.fractions:
            for protocol in PROTOCOLS:
                row = {lab: results.get(f"{fraction}|{protocol}|{lab}") for lab in args.arms}
                if not all(row.values()):
                    continue
                best = max(mean_std(v)[0] for v in row.values())
                cells = [(f"**{m:.3f} ± {s:.3f}**" if m == best else f"{m:.3f} ± {s:.3f}")
                         for m, s in (mean_std(row[lab]) for lab in args.arms)]
                lines.append(f"| {fraction:.0%} | {params.get(str(fraction), 0):,} | {protocol} | " + " | ".join(cells) + " |")
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text("\n".join(lines) + "\n")
        (out / "results.json").write_text(json.dumps({"settings": vars(args), "dense_test_accuracy": dense_accs,
                                                      "parameters_left": params, "results": results}, indent=2))

    for seed in range(args.seeds):
        t0 = time.perf_counter()
        base = train_base(seed, dm, side, args.width, args.epochs, args.arch).model
        dense_accs.append(test_acc(base, x_test, y_test))
        calib, recal = sample_batches(dm, 16, 1000 + seed), sample_batches(dm, 20, 2000 + seed)
        groups = [list(g.members) for g in ordered_groups(base, example)]
        print(f"seed {seed}: trained in {time.perf_counter() - t0:.0f} s; dense test acc {dense_accs[-1]:.4f}", flush=True)
        for fraction in args.fractions:
            for lab in args.arms:
                for protocol in PROTOCOLS:
                    t1 = time.perf_counter()
                    model = (one_shot(base, lab, fraction, calib, recal, seed, example) if protocol == "one-shot"
                             else sequential(base, lab, fraction, calib, recal, seed, example, groups))
                    acc = test_acc(model, x_test, y_test)
                    n = sum(p.numel() for p in model.parameters())
                    if params.setdefault(str(fraction), n) != n:
                        raise RuntimeError(f"{lab} ({protocol}) left {n:,} parameters at {fraction}, others "
                                           f"{params[str(fraction)]:,}: the widths differ between arms.")
                    results.setdefault(f"{fraction}|{protocol}|{lab}", []).append(acc)
                    print(f"  {fraction:.0%} {protocol:<10} {lab:<26} {acc:.4f} ({time.perf_counter() - t1:.0f} s)",
                          flush=True)
        write()
    print((out / "table.md").read_text())
    print(f"written: {out}/table.md, results.json")


if __name__ == "__main__":
    main()
