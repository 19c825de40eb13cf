"""Benchmark: DISCEDIT-U on Fashion-MNIST. Each class is forgotten in turn on the same trained network
(VGG-11 ¼ width or ResNet-20 option B). FA (drop of forget-class accuracy) and RA (drop of remaining-class
accuracy), in points, without and with one fine-tuning epoch on remaining-class training images, for:

- ``discedit``: the defaults (last third of the layers, ratio found by masking until the forget-class accuracy
  on the calibration data is at most 5%, at most half of the components);
- ``discedit+BN``: the same, then BatchNorm statistics re-estimated on the calibration data (all classes);
- ``discedit fixed``: the previous default, 10% of the components of every layer;
- ``random`` / ``l1``: the same layers and the same stopping rule as ``discedit``, another ranking;
- ``retain-FT``: no masking, fine-tuning on the remaining classes only;
- ``retrain`` (``--retrain``): the same network trained from scratch without the class (the gold standard).

Same trained model, calibration data (16 batches of 128 training images), fine-tuning data and seeds for every
arm. Writes ``results.json`` and ``table.md`` to ``--out``.

    python benchmarks/unlearning_fashion_mnist.py [--arch resnet20] [--epochs 3] [--classes 0 1 ...] [--retrain]
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import statistics
import time
from pathlib import Path

import lightning as L
import torch
from _common import RESULTS, datamodule, set_threads, vgg
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.functional.classification import multiclass_accuracy

from lightning_edit import ClassifierModule
from lightning_edit.discedit import forget_retain_accuracy, unlearn
from lightning_edit.models import resnet20

ARMS = ("discedit", "discedit+BN", "discedit fixed", "random", "l1", "retain-FT")


def fit(module, loader, epochs: int) -> float:
    t0 = time.perf_counter()
    L.Trainer(max_epochs=epochs, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
              enable_model_summary=False, enable_progress_bar=False, num_sanity_val_steps=0).fit(module, loader)
    return time.perf_counter() - t0


@torch.no_grad()
def per_class(module, x, y):
    module.eval()
    logits = torch.cat([module(xb) for xb in x.split(1000)])
    return multiclass_accuracy(logits, y, 10, average=None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=["vgg11", "resnet20"], default="resnet20")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-subset", type=int, default=20000)
    ap.add_argument("--test-images", type=int, default=5000)
    ap.add_argument("--ft-images", type=int, default=4000, help="remaining-class training images of the fine-tuning epoch")
    ap.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    ap.add_argument("--retrain", action="store_true", help="add the retrain-without-the-class arm (costly)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    set_threads()
    out = Path(args.out or RESULTS / f"unlearning_fashion_mnist_{args.arch}")
    L.seed_everything(0, verbose=False)
    dm, side = datamodule(batch_size=128, train_subset=args.train_subset)
    dm.setup()
    xt, yt = dm.train_set.x, dm.train_set.y
    xs, ys = dm.test_set.x[: args.test_images], dm.test_set.y[: args.test_images]

    def network():
        return vgg(side) if args.arch == "vgg11" else resnet20(in_channels=1, num_classes=10)

    opt = functools.partial(torch.optim.Adam, lr=2e-3)
    base = ClassifierModule(network(), optimizer=opt)
    train_time = fit(base, DataLoader(TensorDataset(xt, yt), batch_size=128, shuffle=True), args.epochs)
    base_acc = per_class(base, xs, ys)
    calib = list(zip(xt[:2048].split(128), yt[:2048].split(128)))
    print(f"{args.arch}: {args.epochs} epochs on {len(yt)} images in {train_time:.0f} s; per-class test accuracy "
          + " ".join(f"{a:.3f}" for a in base_acc.tolist()))
    arms = ARMS + (("retrain",) if args.retrain else ())
    rows = []
    for c in args.classes:
        f0, r0 = forget_retain_accuracy(base_acc, [c])
        keep = yt != c
        ft_loader = DataLoader(TensorDataset(xt[keep][: args.ft_images], yt[keep][: args.ft_images]), batch_size=128, shuffle=True)
        for arm in arms:
            L.seed_everything(1, verbose=False)
            row = {"class": c, "arm": arm, "base_class_acc": float(base_acc[c])}
            t0 = time.perf_counter()
            if arm == "retrain":
                model = ClassifierModule(network(), optimizer=opt)
                retain_all = DataLoader(TensorDataset(xt[keep], yt[keep]), batch_size=128, shuffle=True)
                row["seconds"] = fit(model, retain_all, args.epochs)
                f1, r1 = forget_retain_accuracy(per_class(model, xs, ys), [c])
                row.update(FA=f0 - f1, RA=r0 - r1)
                rows.append(row)
                print(f"class {c} {arm:<15} FA {100 * row['FA']:6.1f} RA {100 * row['RA']:6.1f} ({row['seconds']:.0f} s)", flush=True)
                continue
            if arm == "retain-FT":
                model = copy.deepcopy(base)
            else:
                kwargs: dict = {"importance": arm if arm in ("random", "l1") else "discedit"}
                if arm == "discedit fixed":
                    kwargs.update(ratio=0.1, layers=None)
                if arm == "discedit+BN":
                    kwargs.update(recalibration_batches=calib)
                model, report = unlearn(base, calib, [c], **kwargs)
                row.update(ratio=report.ratio, fraction_masked=report.fraction_masked,
                           calibration_forget_acc=report.calibration_forget_accuracy)
            row["seconds"] = time.perf_counter() - t0
            f1, r1 = forget_retain_accuracy(per_class(model, xs, ys), [c])
            fit(model, ft_loader, 1)
            f2, r2 = forget_retain_accuracy(per_class(model, xs, ys), [c])
            row.update(FA=f0 - f1, RA=r0 - r1, FA_ft=f0 - f2, RA_ft=r0 - r2)
            rows.append(row)
            print(f"class {c} {arm:<15} FA {100 * row['FA']:6.1f} RA {100 * row['RA']:6.1f} | after FT: FA "
                  f"{100 * row['FA_ft']:6.1f} RA {100 * row['RA_ft']:6.1f} | ratio {row.get('ratio')} "
                  f"({row['seconds']:.1f} s)", flush=True)
    write(rows, arms, args, train_time, base_acc.tolist(), out)


def write(rows, arms, args, train_time, base_acc, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    easy = [c for c in args.classes if base_acc[c] >= 0.9]
    hard = [c for c in args.classes if base_acc[c] < 0.9]
    lines = [f"{args.arch}, {args.epochs} epochs on {args.train_subset} images (training {train_time:.0f} s); "
             f"FA/RA in points (mean ± std over classes); classes with base accuracy < 90%: {hard}", "",
             "| arm | classes | FA | RA | FA after FT | RA after FT | ratio | edit s |", "|---|---|---|---|---|---|---|---|"]
    summary: dict = {}
    for arm in arms:
        for label, group in (("base acc ≥ 90%", easy), ("base acc < 90%", hard)):
            sel = [r for r in rows if r["arm"] == arm and r["class"] in group]
            if not sel:
                continue

            def ms(key):
                vals = [100 * r[key] for r in sel if r.get(key) is not None]
                if not vals:
                    return "–"
                return f"{statistics.fmean(vals):.1f} ± {statistics.stdev(vals) if len(vals) > 1 else 0.0:.1f}"

            ratios = [r["ratio"] for r in sel if r.get("ratio") is not None]
            summary[f"{arm} / {label}"] = {k: ms(k) for k in ("FA", "RA", "FA_ft", "RA_ft")}
            lines.append(f"| {arm} | {label} ({len(sel)}) | {ms('FA')} | {ms('RA')} | {ms('FA_ft')} | {ms('RA_ft')} | "
                         f"{statistics.fmean(ratios) if ratios else float('nan'):.2f} | "
                         f"{statistics.fmean(r['seconds'] for r in sel):.1f} |")
    table = "\n".join(lines)
    (out / "results.json").write_text(json.dumps({"settings": vars(args), "train_seconds": train_time,
                                                  "base_per_class_acc": base_acc, "rows": rows, "summary": summary}, indent=1))
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
