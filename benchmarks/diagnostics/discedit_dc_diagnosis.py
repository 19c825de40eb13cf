"""What DISCEDIT-SP's conv-output feature sees: the kernel sums (the DC gain) of a filter, and little else.

At the conv output, before BatchNorm and the nonlinearity, the spatial mean of channel j is, up to border
terms, ``s_j = Σ_i a_ji · mean(x_i) + b_j`` with ``a_ji`` the sum of the kernel ``W_j,i``: a linear read-out of
the input channels' means. In the first layer (one input channel) every channel reads the same scalar, so
every channel gets the same Fisher bound up to border terms; in later layers a zero-sum filter (an edge or
texture detector) has a near-constant mean, however strongly its map varies. The ``fisher_energy`` witness adds
the spatial mean of the squared map, ``z = [s, mean(a²)]``, which sees that variation.

For each seed (the network of ``accuracy_fashion_mnist.py``, same recipe), per conv layer:
the relative spread of the conv-site bounds (std / mean over channels), and the Spearman correlation of each
DISCEDIT score with the filter's DC fraction ``‖a_j‖ / ‖W_j‖`` (how much of the filter is its kernel sums).
Then the whole network is pruned at the same parameter sparsity (layer scope) by ``fisher`` and
``fisher_energy`` at the conv output and after BN + ReLU, BN-recalibrated, no fine-tuning. Writes
``results.json`` and ``table.md`` to ``--out``.

    python benchmarks/diagnostics/discedit_dc_diagnosis.py [--width 0.25] [--seeds 3] [--sparsities 0.3 0.5 0.7]
"""

from __future__ import annotations

import sys

import argparse
import copy
import json
import statistics
from pathlib import Path

import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: _common and the headline scripts
from _common import RESULTS, add_pruning_arguments, pruning_setup
from accuracy_fashion_mnist import sample_batches, test_acc, train_base

from lightning_edit.discedit import channel_scores, prunable_layers, prune_channels, recalibrate_batchnorm

ARMS = {  # label -> (witness, site, redundancy)
    "fisher, conv output": ("fisher", "conv", 0.0),
    "fisher_energy, conv output": ("fisher_energy", "conv", 0.0),
    "fisher, after BN+ReLU": ("fisher", "activation", 0.0),
    "fisher_energy, after BN+ReLU": ("fisher_energy", "activation", 0.0),
    "fisher + mRMR, conv output": ("fisher", "conv", 1.0),
    "fisher + mRMR, after BN+ReLU": ("fisher", "activation", 1.0),
}


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def dc_fraction(conv: torch.nn.Conv2d) -> torch.Tensor:
    w = conv.weight.detach().double()
    return w.sum((2, 3)).norm(dim=1) / w.flatten(1).norm(dim=1)


def fmt(v: list[float]) -> str:
    return f"{statistics.fmean(v):.3f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    add_pruning_arguments(ap)
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = Path(args.out or RESULTS / f"discedit_dc_diagnosis_w{args.width:g}")
    dm, side, x_test, y_test, example = pruning_setup(args.train_subset)
    per_layer: dict[str, list[float]] = {}
    accuracy: dict[str, list[float]] = {}
    names: list[str] = []
    for seed in range(args.seeds):
        base = train_base(seed, dm, side, args.width, args.epochs)
        dense_params = sum(p.numel() for p in base.model.parameters())
        calib, recal = sample_batches(dm, 16, 1000 + seed), sample_batches(dm, 20, 2000 + seed)
        layers = prunable_layers(base.model)
        names[:] = list(layers)
        scores = {label: channel_scores(base.model, layers, "discedit", calib, 10, witness, site=site, example_input=example,
                                        redundancy=redundancy)
                  for label, (witness, site, redundancy) in ARMS.items() if label in args.arms}
        for name, conv in layers.items():
            dc = dc_fraction(conv)
            for label, sc in scores.items():
                s = sc[name]
                per_layer.setdefault(f"{name}|{label}|spread", []).append(float(s.std() / s.mean()))
                per_layer.setdefault(f"{name}|{label}|spearman_dc", []).append(spearman(s, dc))
        for sparsity in args.sparsities:
            for label, sc in scores.items():
                model = copy.deepcopy(base.model)
                prune_channels(model, example, sc, sparsity, prunable_layers(model), sparsity_type="parameters",
                               min_channels=1, dense_params=dense_params)
                recalibrate_batchnorm(model, recal)
                accuracy.setdefault(f"{sparsity}|{label}", []).append(test_acc(model, x_test, y_test))
                print(f"seed {seed} {sparsity:.0%} {label:<30} {accuracy[f'{sparsity}|{label}'][-1]:.4f}", flush=True)
    labels = list(args.arms)
    lines = [f"VGG-11 width {args.width:g}, {args.seeds} seeds. Conv-site and BN+ReLU-site DISCEDIT scores (fisher witness).", "",
             "Spread of the bounds over a layer's channels (std / mean) and Spearman correlation with the DC fraction:", "",
             "| layer | " + " | ".join(f"{lab}: spread" for lab in labels) + " | " + " | ".join(f"{lab}: ρ(DC)" for lab in labels) + " |",
             "|---|" + "---|" * (2 * len(labels))]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(fmt(per_layer[f"{name}|{lab}|spread"]) for lab in labels) + " | "
                     + " | ".join(fmt(per_layer[f"{name}|{lab}|spearman_dc"]) for lab in labels) + " |")
    lines += ["", "Whole network, layer scope, same parameter sparsity, BN-recalibrated, no fine-tuning (test accuracy):", "",
              "| sparsity | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for sparsity in args.sparsities:
        lines.append(f"| {sparsity:.0%} | " + " | ".join(fmt(accuracy[f"{sparsity}|{lab}"]) for lab in labels) + " |")
    table = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"settings": vars(args), "layers": names, "per_layer": per_layer,
                                                  "accuracy": accuracy}, indent=2))
    print(table)


if __name__ == "__main__":
    main()
