"""Where DISCEDIT-SP loses: prune one layer at a time and compare the criteria layer by layer.

The whole-network benchmark (``accuracy_fashion_mnist.py``) ranks DISCEDIT below random on VGG-11 after BatchNorm
recalibration. This script asks in which layers. For each seed the network of that benchmark is trained anew
(same seed, same recipe); every criterion scores all layers once on the same calibration sample; then, for
each channel group alone, a copy loses ``fraction`` of that group's channels by each criterion, its BatchNorm
statistics are re-estimated on the same recalibration sample, and its test accuracy is measured (all 10,000
test images). A group is one conv layer in VGG; in ResNet-20 (``--arch resnet20``) the convs that add into one
residual stream form one group, scored by the maximum over its layers as in the whole-network benchmark. With
``--units sets`` the units are instead the coupled groups together, the single-layer groups together, and all
groups together (each group losing ``fraction``), to see where pruning groups together costs more. Taylor is
left out (it needs a loss at scoring time, and the whole-network table has it).

Writes ``results.json``, ``table.md`` and ``sensitivity.png`` (test accuracy against layer, one line per
criterion, one panel per fraction) to ``--out``.

    python benchmarks/diagnostics/pruning_layer_sensitivity.py [--arch vgg11|resnet20] [--width 0.25] [--seeds 3] [--fractions 0.5 0.75]
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

LABELS = ["DISCEDIT (conv output)", "DISCEDIT (after BN+ReLU)", "L1 (filter)", "L2 (torch-pruning group)",
          "BN scale (torch-pruning)", "random"]


def mean_std(v: list[float]) -> tuple[float, float]:
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    add_pruning_arguments(ap)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.75], help="channels removed from the one layer")
    ap.add_argument("--arms", nargs="+", default=LABELS, choices=[k for k, v in ARMS.items() if v[0] != "taylor"],
                    help="criteria (labels of accuracy_fashion_mnist.ARMS)")
    ap.add_argument("--arch", choices=["vgg11", "resnet20"], default="vgg11", help="resnet20: option-B shortcuts")
    ap.add_argument("--units", choices=["groups", "sets"], default="groups",
                    help="groups: one channel group at a time; sets: the coupled groups (residual streams) together, "
                         "the single-layer groups together, and all groups together")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    labels = args.arms
    tag = f"w{args.width:g}" if args.arch == "vgg11" else args.arch
    out = Path(args.out or RESULTS / f"pruning_layer_sensitivity_{tag}{'_sets' if args.units == 'sets' else ''}")
    network = f"VGG-11, width {args.width:g}" if args.arch == "vgg11" else "ResNet-20, option-B shortcuts"
    members: dict[str, list[str]] = {}  # group (named by its root layer) -> its conv layers
    dm, side, x_test, y_test, example = pruning_setup(args.train_subset)
    results: dict[str, list[float]] = {}
    dense_accs: list[float] = []
    dense_recal_accs: list[float] = []  # the unpruned network after the same recalibration: the reference
    layer_names: list[str] = []
    widths: dict[str, int] = {}

    def write() -> None:
        lines = [f"Dense test accuracy {mean_std(dense_accs)[0]:.3f} ± {mean_std(dense_accs)[1]:.3f} ({network}, "
                 f"{len(dense_accs)} seeds); after the same BatchNorm recalibration, unpruned: "
                 f"{mean_std(dense_recal_accs)[0]:.3f} ± {mean_std(dense_recal_accs)[1]:.3f}. One "
                 f"{'channel group' if args.units == 'groups' else 'set of groups (each group losing the fraction)'} "
                 "pruned at a time, BN-recalibrated, no fine-tuning.", ""]
        coupled = {g: m for g, m in members.items() if len(m) > 1} if args.units == "groups" else {}
        if coupled:
            lines += ["Coupled groups (one residual stream): " + "; ".join(f"{g}: {', '.join(m)}" for g, m in coupled.items()), ""]
        for fraction in args.fractions:
            lines += [f"**{fraction:.0%} of the channels of each pruned group removed**", "",
                      "| group | channels | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
            for name in layer_names:
                cells = []
                row = {lab: results.get(f"{fraction}|{name}|{lab}") for lab in labels}
                best = max(mean_std(v)[0] for v in row.values() if v)
                for lab in labels:
                    m, s = mean_std(row[lab])
                    cells.append(f"**{m:.3f} ± {s:.3f}**" if m == best else f"{m:.3f} ± {s:.3f}")
                lines.append(f"| {name} | {widths[name]} | " + " | ".join(cells) + " |")
            lines.append("")
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text("\n".join(lines))
        (out / "results.json").write_text(json.dumps({"settings": vars(args), "groups": layer_names, "members": members,
                                                      "widths": widths,
                                                      "dense_test_accuracy": dense_accs,
                                                      "dense_recalibrated_test_accuracy": dense_recal_accs, "results": results}, indent=2))
        plot()

    def plot() -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(args.fractions), figsize=(6 * len(args.fractions), 4), squeeze=False)
        xs = range(len(layer_names))
        for ax, fraction in zip(axes[0], args.fractions):
            for lab in labels:
                stats = [mean_std(results[f"{fraction}|{n}|{lab}"]) for n in layer_names]
                ax.errorbar(xs, [m for m, _ in stats], yerr=[s for _, s in stats], label=lab, marker="o", capsize=2,
                            linewidth=2.5 if lab.startswith("DISCEDIT") else 1.2)
            ax.axhline(mean_std(dense_recal_accs)[0], color="k", linestyle=":", label="unpruned, BN-recalibrated")
            ax.set_xticks(list(xs), [f"{n}\n({widths[n]})" for n in layer_names], fontsize=7)
            ax.set_title(f"{fraction:.0%} of each pruned group's channels removed, BN-recalibrated")
            ax.set_xlabel("pruned group (channels)")
            ax.set_ylabel("test accuracy")
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "sensitivity.png", dpi=120)
        plt.close(fig)

    for seed in range(args.seeds):
        t0 = time.perf_counter()
        base = train_base(seed, dm, side, args.width, args.epochs, args.arch)
        dense_accs.append(test_acc(base.model, x_test, y_test))
        calib, recal = sample_batches(dm, 16, 1000 + seed), sample_batches(dm, 20, 2000 + seed)
        dense_recal = copy.deepcopy(base.model)
        recalibrate_batchnorm(dense_recal, recal)
        dense_recal_accs.append(test_acc(dense_recal, x_test, y_test))
        print(f"seed {seed}: trained in {time.perf_counter() - t0:.0f} s; dense test acc {dense_accs[-1]:.4f}, "
              f"BN-recalibrated {dense_recal_accs[-1]:.4f}", flush=True)
        layers = prunable_layers(base.model)
        groups = ordered_groups(base.model, example)
        if args.units == "groups":
            members.update({g.root: list(g.members) for g in groups})
            widths.update({g.root: g.width for g in groups})
        else:
            sets = {"coupled groups": [g for g in groups if len(g.members) > 1],
                    "single-layer groups": [g for g in groups if len(g.members) == 1], "all groups": groups}
            members.update({k: [n for g in v for n in g.members] for k, v in sets.items() if v})
            widths.update({k: sum(g.width for g in v) for k, v in sets.items() if v})
        layer_names[:] = list(members)
        for lab in labels:
            scores = arm_scores(base.model, layers, lab, calib, seed, example)
            for name in layer_names:
                for fraction in args.fractions:
                    model = copy.deepcopy(base.model)
                    copies = prunable_layers(model)
                    one = {n: copies[n] for n in members[name]}
                    prune_channels(model, example, {n: scores[n] for n in one}, fraction, one, min_channels=1)
                    recalibrate_batchnorm(model, recal)
                    acc = test_acc(model, x_test, y_test)
                    results.setdefault(f"{fraction}|{name}|{lab}", []).append(acc)
            print(f"  {lab:<28} " + "  ".join(f"{name}:{results[f'{args.fractions[0]}|{name}|{lab}'][-1]:.3f}"
                                             for name in layer_names), flush=True)
        write()
    print((out / "table.md").read_text())
    print(f"written: {out}/table.md, results.json, sensitivity.png")


if __name__ == "__main__":
    main()
