"""Benchmark 4: DISCEDIT-U on Fashion-MNIST. Each of the 10 classes is forgotten in turn on the same
trained VGG-style CNN; FA (drop of forget-class accuracy) and RA (drop of remaining-class accuracy),
in points, without and with one fine-tuning epoch on the remaining classes, for DISCEDIT-U and the
baselines (random and L1 masking of as many components, fine-tuning on the retain set only) and the
gold standard (the same CNN trained from scratch without the class). Also: edit time / retraining time.

    python benchmarks/unlearning_fashion_mnist.py [--epochs 3] [--train-subset 20000] [--ratio 0.1]
"""

from __future__ import annotations

import argparse
import copy
import functools
import time

import lightning as L
import torch
from _common import datamodule, vgg
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.functional.classification import multiclass_accuracy

from lightning_edit import ClassifierModule
from lightning_edit.discedit import forget_retain_accuracy, unlearn

LATE = ["model.features.15", "model.features.18", "model.features.22", "model.features.25"]


def fit(module, loader, epochs: int) -> float:
    t0 = time.perf_counter()
    L.Trainer(max_epochs=epochs, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
              enable_model_summary=False, enable_progress_bar=False, num_sanity_val_steps=0).fit(module, loader)
    return time.perf_counter() - t0


@torch.no_grad()
def fa_ra_inputs(module, x, y, forget):
    module.eval()
    logits = torch.cat([module(xb) for xb in x.split(1000)])
    return forget_retain_accuracy(multiclass_accuracy(logits, y, 10, average=None), forget)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-subset", type=int, default=20000)
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    args = ap.parse_args()
    L.seed_everything(0, verbose=False)
    dm, side = datamodule(batch_size=128, train_subset=args.train_subset)
    dm.setup()
    xt, yt = dm.train_set.x, dm.train_set.y
    xs, ys = dm.test_set.x, dm.test_set.y
    opt = functools.partial(torch.optim.Adam, lr=2e-3)
    base = ClassifierModule(vgg(side), optimizer=opt)
    train_time = fit(base, DataLoader(TensorDataset(xt, yt), batch_size=128, shuffle=True), args.epochs)
    calib = list(zip(xt[:2048].split(128), yt[:2048].split(128)))
    print(f"base model: {args.epochs} epochs on {len(yt)} images in {train_time:.0f} s")

    methods = ("discedit", "random", "l1", "retain-FT", "retrain")
    sums = {m: torch.zeros(4) for m in methods}
    edit_times = []
    print(f"{'class':>5} {'method':<9} {'FA noFT':>8} {'RA noFT':>8} {'FA FT':>7} {'RA FT':>7}")
    for c in args.classes:
        f0, r0 = fa_ra_inputs(base, xs, ys, [c])
        keep = yt != c
        retain = DataLoader(TensorDataset(xt[keep], yt[keep]), batch_size=128, shuffle=True)
        for method in methods:
            L.seed_everything(1, verbose=False)
            if method == "retrain":
                model = ClassifierModule(vgg(side), optimizer=opt)
                t = fit(model, retain, args.epochs)
                f1, r1 = fa_ra_inputs(model, xs, ys, [c])
                row = torch.tensor([f0 - f1, r0 - r1, f0 - f1, r0 - r1])
                retrain_time = t
            else:
                if method == "retain-FT":
                    model = copy.deepcopy(base)
                else:
                    t0 = time.perf_counter()
                    model, _ = unlearn(base, calib, [c], ratio=args.ratio, layers=LATE, importance=method)
                    if method == "discedit":
                        edit_times.append(time.perf_counter() - t0)
                f1, r1 = fa_ra_inputs(model, xs, ys, [c])
                fit(model, retain, 1)
                f2, r2 = fa_ra_inputs(model, xs, ys, [c])
                row = torch.tensor([f0 - f1, r0 - r1, f0 - f2, r0 - r2])
            sums[method] += row
            print(f"{c:>5} {method:<9} " + " ".join(f"{100 * v:>7.1f}" for v in row), flush=True)
        print(f"      edit {edit_times[-1]:.2f} s vs retrain {retrain_time:.0f} s: ratio {edit_times[-1] / retrain_time:.4f}")

    n = len(args.classes)
    print(f"\nmean over {n} classes (points; FA high = forgotten, RA low = remaining kept)")
    print(f"{'method':<10} {'FA noFT':>8} {'RA noFT':>8} {'FA 1-ep FT':>11} {'RA 1-ep FT':>11}")
    for m in methods:
        v = 100 * sums[m] / n
        print(f"{m:<10} {v[0]:>8.1f} {v[1]:>8.1f} {v[2]:>11.1f} {v[3]:>11.1f}")
    print(f"edit time / retraining time: {sum(edit_times) / len(edit_times) / retrain_time:.4f}")


if __name__ == "__main__":
    main()
