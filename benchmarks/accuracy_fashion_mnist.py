"""Benchmark 3: test accuracy after pruning the same trained VGG-style CNN on Fashion-MNIST, without
and with one fine-tuning epoch, at three channel sparsities: DISCEDIT (fisher witness) vs L1-norm vs
random. Prints one table (and writes it as CSV next to this file's output directory).

    python benchmarks/accuracy_fashion_mnist.py [--epochs 3] [--train-subset N] [--sparsities 0.3 0.5 0.7]
"""

from __future__ import annotations

import argparse
import copy
import functools
import time

import lightning as L
import torch
from _common import datamodule, vgg

from lightning_edit import ClassifierModule
from lightning_edit.discedit import channel_scores, prunable_layers, prune_channels


def trainer(epochs: int) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                     enable_model_summary=False, enable_progress_bar=False, num_sanity_val_steps=0,
                     limit_val_batches=0)


def test_acc(module, dm) -> float:
    return trainer(1).test(module, datamodule=dm, verbose=False)[0]["test_acc"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-subset", type=int, default=None)
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    ap.add_argument("--calibration-batches", type=int, default=16)
    ap.add_argument("--width", type=float, default=0.25)
    args = ap.parse_args()
    L.seed_everything(0, verbose=False)
    dm, side = datamodule(batch_size=128, train_subset=args.train_subset)
    dm.setup()
    base = ClassifierModule(vgg(side, args.width), optimizer=functools.partial(torch.optim.Adam, lr=2e-3))
    t0 = time.perf_counter()
    trainer(args.epochs).fit(base, datamodule=dm)
    print(f"trained {args.epochs} epochs in {time.perf_counter() - t0:.0f} s; dense test acc {test_acc(base, dm):.4f}")
    example = torch.zeros(1, 1, side, side)
    loader = dm.train_dataloader()
    calib = [b for b, _ in zip(loader, range(args.calibration_batches))]

    rows = []
    for sparsity in args.sparsities:
        for importance in ("discedit", "l1", "random"):
            L.seed_everything(1, verbose=False)
            module = copy.deepcopy(base).cpu()
            layers = prunable_layers(module)
            scores = channel_scores(module, layers, importance, calib, 10, "fisher",
                                    generator=torch.Generator().manual_seed(0))
            prune_channels(module, example, scores, sparsity, layers, min_channels=1)
            no_ft = test_acc(module, dm)
            trainer(1).fit(module, datamodule=dm)
            rows.append((sparsity, importance, no_ft, test_acc(module, dm)))
            print(f"sparsity {sparsity:.1f} {importance:<8} no-FT {no_ft:.4f}  1-epoch FT {rows[-1][3]:.4f}", flush=True)

    print(f"\n{'sparsity':>8} {'method':<9} {'acc no FT':>10} {'acc 1-ep FT':>12}")
    for s, m, a, b in rows:
        print(f"{s:>8.1f} {m:<9} {a:>10.4f} {b:>12.4f}")


if __name__ == "__main__":
    main()
