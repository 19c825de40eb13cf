"""Do importance criteria keep redundant channels? The mean |correlation| among the channels each criterion keeps.

``pruning_layer_sensitivity.py`` found that in the last conv of VGG-11 a random half of the channels keeps more
accuracy than the half any criterion keeps. One reading: a per-channel score keeps channels that carry the same
information. This measures it. For each seed (the network of ``accuracy_fashion_mnist.py``), each conv layer and
each criterion, the channels a 50% layer-scope prune would keep (the highest-scored half, as ``prune_channels``
keeps them; random: 20 random halves averaged) are compared by the mean absolute Pearson correlation, over 2,048
test images, between the spatial means of their maps after BatchNorm + ReLU (the map the next layer reads).
Higher means more redundant. Writes ``results.json`` and ``table.md`` to ``--out``.

    python benchmarks/diagnostics/kept_channel_redundancy.py [--width 0.25] [--seeds 3]
"""

from __future__ import annotations

import sys

import argparse
import json
import statistics
from pathlib import Path

import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: _common and the headline scripts
from _common import RESULTS, add_pruning_arguments, pruning_setup
from accuracy_fashion_mnist import ARMS, arm_scores, sample_batches, train_base
from pruning_layer_sensitivity import LABELS

from lightning_edit.discedit import prunable_layers


def mean_abs_corr(features: torch.Tensor, keep: torch.Tensor) -> float:
    """Mean |Pearson correlation| over distinct pairs of the kept columns of ``features (N, C)``."""
    c = torch.corrcoef(features[:, keep].T).abs().nan_to_num(0.0)
    k = len(keep)
    return float((c.sum() - c.diagonal().sum()) / (k * (k - 1)))


@torch.no_grad()
def activation_means(model: torch.nn.Module, layers: dict[str, torch.nn.Module], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Spatial means after BatchNorm + ReLU of every layer (the module two places after the conv), ``(N, C)`` each."""
    modules = dict(model.named_modules())
    names = {n: n.rsplit(".", 1)[0] + "." + str(int(n.rsplit(".", 1)[1]) + 2) for n in layers}
    out: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    hooks = [modules[relu].register_forward_hook(lambda _m, _i, o, n=n: out[n].append(o.mean((2, 3)).double()))
             for n, relu in names.items()]
    try:
        model.eval()
        for b in x.split(512):
            model(b)
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat(v) for n, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    add_pruning_arguments(ap)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = Path(args.out or RESULTS / f"kept_channel_redundancy_w{args.width:g}")
    dm, side, x_test, _, example = pruning_setup(args.train_subset)
    results: dict[str, list[float]] = {}
    names: list[str] = []
    for seed in range(args.seeds):
        base = train_base(seed, dm, side, args.width, args.epochs)
        calib = sample_batches(dm, 16, 1000 + seed)
        layers = prunable_layers(base.model)
        names[:] = list(layers)
        feats = activation_means(base.model, layers, x_test[:2048])
        g = torch.Generator().manual_seed(seed)
        for lab in LABELS:
            scores = arm_scores(base.model, layers, lab, calib, seed, example)
            for name in names:
                width = len(scores[name])
                if ARMS[lab][0] == "random":
                    value = statistics.fmean(mean_abs_corr(feats[name], torch.randperm(width, generator=g)[: width // 2])
                                             for _ in range(20))
                else:
                    value = mean_abs_corr(feats[name], torch.argsort(scores[name], descending=True, stable=True)[: width // 2])
                results.setdefault(f"{name}|{lab}", []).append(value)
        for name in names:
            results.setdefault(f"{name}|all channels", []).append(mean_abs_corr(feats[name], torch.arange(feats[name].shape[1])))
        print(f"seed {seed}: " + "  ".join(f"{n}: {results[f'{n}|DISCEDIT (conv output)'][-1]:.3f}/"
                                           f"{results[f'{n}|random'][-1]:.3f}" for n in names), flush=True)
    cols = LABELS + ["all channels"]

    def cell(v: list[float]) -> str:
        return f"{statistics.fmean(v):.3f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.3f}"

    lines = [f"VGG-11 width {args.width:g}, {args.seeds} seeds: mean |correlation| among the channels a 50% layer-scope prune "
             "keeps (spatial means after BN + ReLU, 2,048 test images; random: 20 draws).", "",
             "| layer | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {n} | " + " | ".join(cell(results[f"{n}|{c}"]) for c in cols) + " |" for n in names]
    table = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"settings": vars(args), "layers": names, "results": results}, indent=2))
    print(table)


if __name__ == "__main__":
    main()
