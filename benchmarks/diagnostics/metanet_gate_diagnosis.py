"""Diagnosis of the weight-pruning editor's gates: one editor per variant (gate granularity, magnitude prior,
initial gate logit, width), trained at one sparsity with the benchmark's recipe (``metanet_requirements.py``,
seed 0), then scored on the test networks and 40 held-out-architecture networks, with its weight changes and
with the mask alone (Δθ = 0: the per-layer scales of the changes set to zero). ``@0`` scores a variant untrained.
Appends one JSON line per variant to ``--out``.

    python benchmarks/diagnostics/metanet_gate_diagnosis.py --dataset digits-cnn --sparsity 0.6 --epochs 60 \\
        --variants kernel_prior@0 kernel_prior kernel_bias0 kernel weight weight_prior@0 weight_prior
    python benchmarks/diagnostics/metanet_gate_diagnosis.py --dataset adult --sparsity 0.8 --epochs 15 --variants weight_prior_h16 \
        weight_prior_h16_l2 weight_prior_h8 weight_prior_h8_l2
"""

from __future__ import annotations

import sys

import argparse
import json
import statistics
from pathlib import Path

import lightning as L
import torch

from lightning_edit.data import AdultDataModule, DigitsDataModule
from lightning_edit.metanet import MetanetworkEditor, ModelZooDataModule, measure
from lightning_edit.metanet.population import split_tensors

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: _common and the headline scripts
from _common import RESULTS
from metanet_requirements import train_editor

VARIANTS = {  # name -> MetanetworkEditor arguments
    "kernel": {"gate_granularity": "edge", "gate_prior": "none"},
    "kernel_bias0": {"gate_granularity": "edge", "gate_prior": "none", "gate_bias": 0.0},
    "kernel_prior": {"gate_granularity": "edge", "gate_prior": "magnitude"},
    "weight": {"gate_granularity": "weight", "gate_prior": "none"},
    "weight_prior": {"gate_granularity": "weight", "gate_prior": "magnitude"},
    "weight_prior_h16": {"gate_granularity": "weight", "gate_prior": "magnitude", "hidden": 16},
    "weight_prior_h16_l2": {"gate_granularity": "weight", "gate_prior": "magnitude", "hidden": 16, "num_layers": 2},
    "weight_prior_h8": {"gate_granularity": "weight", "gate_prior": "magnitude", "hidden": 8},
    "weight_prior_h8_l2": {"gate_granularity": "weight", "gate_prior": "magnitude", "hidden": 8, "num_layers": 2},
}


def population(dataset: str, cache: str) -> ModelZooDataModule:
    """The populations of ``metanet_requirements.py`` (same settings, so the same cache)."""
    if dataset == "adult":
        return ModelZooDataModule(num_models=512, widths=[16, 32, 64, 128], depths=[1, 2, 3], epochs=[1, 2, 3],
                                  activations=["relu", "tanh", "gelu"], heldout_widths=[128], heldout_depths=[3],
                                  data=AdultDataModule(batch_size=1024), root=cache)
    return ModelZooDataModule(num_models=256, family="cnn", widths=[8, 12, 16, 24, 32], depths=[2, 3],
                              epochs=[15, 30, 45], activations=["relu", "tanh", "gelu"], heldout_widths=[32],
                              train_lr=1e-2, train_batch_size=64, data=DigitsDataModule(batch_size=256), root=cache)


def accuracies(editor: MetanetworkEditor, zoo, indices: list[int], x, y, s) -> list[float]:
    return [measure(editor.requirement, editor.edit(zoo.models[i]), x, y, s)["accuracy"] for i in indices]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", choices=["adult", "digits-cnn"], default="digits-cnn")
    ap.add_argument("--sparsity", type=float, default=0.6)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"names in {list(VARIANTS)}, '@0': untrained")
    ap.add_argument("--out", default=None)
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "lightning_edit" / "zoo"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out or RESULTS / f"metanet_requirements_{args.dataset}" / f"gate_diagnosis_sparsity{args.sparsity:g}.jsonl")
    zoo = population(args.dataset, args.cache)
    zoo.setup()
    x, y, s = split_tensors(zoo.data.test_set)
    splits = {"test": zoo.test_idx, "heldout": zoo.heldout_arch_idx[:40]}
    for variant in args.variants:
        name, _, untrained = variant.partition("@")
        req = {"sparsity": args.sparsity}
        if untrained:
            L.seed_everything(0, verbose=False)
            editor, seconds = MetanetworkEditor("weight_pruning", req, kernel_size=zoo.max_kernel, **VARIANTS[name]).eval(), 0.0
        else:
            editor, seconds = train_editor("weight_pruning", req, VARIANTS[name], zoo, args.epochs)
        row = {"variant": variant, "sparsity": args.sparsity, "epochs": 0 if untrained else args.epochs,
               "train_s": round(seconds), "editor": VARIANTS[name]}
        for split, indices in splits.items():
            full = accuracies(editor, zoo, indices, x, y, s)
            scale = editor.metanet.scale.data.clone()
            editor.metanet.scale.data.zero_()  # the mask alone
            mask_only = accuracies(editor, zoo, indices, x, y, s)
            editor.metanet.scale.data.copy_(scale)
            row[split] = {"accuracy": 100 * statistics.fmean(full), "accuracy_std": 100 * statistics.stdev(full),
                          "mask_only_accuracy": 100 * statistics.fmean(mask_only)}
        print(json.dumps(row), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
