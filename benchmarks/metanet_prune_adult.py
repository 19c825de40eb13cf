"""Benchmark 7: weight pruning of held-out MLPs (trained on UCI Adult) at the same sparsity by
(a) the trained metanetwork in one forward pass, (b) magnitude pruning, (c) magnitude pruning + one
epoch of fine-tuning with the mask held; test accuracy and time per edit (ratio to the metanetwork's).

    python benchmarks/metanet_prune_adult.py [--models 64] [--epochs 200] [--sparsity 0.6]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import lightning as L
import torch
import torch.nn.functional as F

from lightning_edit.metanet import MetanetworkEditor, ModelZooDataModule


def magnitude_prune(model: torch.nn.Module, sparsity: float) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """Zero the smallest-magnitude ``sparsity`` fraction of all weights (global); returns the copy and masks."""
    pruned = copy.deepcopy(model)
    weights = [m.weight for m in pruned.modules() if isinstance(m, torch.nn.Linear)]
    flat = torch.cat([w.detach().abs().flatten() for w in weights])
    k = int(round(sparsity * len(flat)))
    threshold = flat.kthvalue(k).values if k else flat.min() - 1
    masks = []
    with torch.no_grad():
        for w in weights:
            mask = (w.abs() > threshold).float()
            w.mul_(mask)
            masks.append(mask)
    return pruned, masks


def finetune(model, masks, x, y, epochs=1):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    for _ in range(epochs):
        for idx in torch.randperm(len(y)).split(256):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            with torch.no_grad():
                for w, m in zip(weights, masks):
                    w.mul_(m)
    return model


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--sparsity", type=float, default=0.6)
    args = ap.parse_args()
    L.seed_everything(0, verbose=False)
    zoo = ModelZooDataModule(num_models=args.models)
    zoo.setup()
    editor = MetanetworkEditor(sparsity=args.sparsity)
    t0 = time.perf_counter()
    L.Trainer(max_epochs=args.epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(editor, zoo)
    print(f"metanetwork trained in {time.perf_counter() - t0:.0f} s on {len(zoo.train_idx)} networks")
    xt, yt, _ = zoo.data.train_set.tensors
    xs, ys, _ = zoo.data.test_set.tensors
    rows = {k: [] for k in ("original", "metanet", "magnitude", "magnitude+FT")}
    times = {k: [] for k in ("metanet", "magnitude", "magnitude+FT")}
    for i in zoo.test_idx:
        model = zoo.models[i]
        rows["original"].append(accuracy(model, xs, ys))
        t0 = time.perf_counter()
        edited = editor.edit(model)
        times["metanet"].append(time.perf_counter() - t0)
        rows["metanet"].append(accuracy(edited, xs, ys))
        t0 = time.perf_counter()
        pruned, masks = magnitude_prune(model, args.sparsity)
        times["magnitude"].append(time.perf_counter() - t0)
        rows["magnitude"].append(accuracy(pruned, xs, ys))
        t0 = time.perf_counter()
        tuned = finetune(pruned, masks, xt, yt)
        times["magnitude+FT"].append(times["magnitude"][-1] + time.perf_counter() - t0)
        rows["magnitude+FT"].append(accuracy(tuned, xs, ys))
    meta = statistics.median(times["metanet"])
    print(f"\n{len(zoo.test_idx)} held-out networks, sparsity {args.sparsity:.0%} of the weights")
    print(f"{'method':<14} {'test acc':>9} {'ms/edit':>9} {'time / metanet':>15}")
    for k, accs in rows.items():
        t = statistics.median(times[k]) if k in times else float("nan")
        print(f"{k:<14} {100 * statistics.mean(accs):>8.2f}% {1000 * t:>9.2f} {t / meta:>15.1f}")


if __name__ == "__main__":
    main()
