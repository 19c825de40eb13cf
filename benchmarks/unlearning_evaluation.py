"""Benchmark: class unlearning measured the way the unlearning literature asks, DISCEDIT-U against its baselines.

For every seed (a freshly trained network) and every forget class, each arm edits the same trained network and is
measured on the same data:

- ``DISCEDIT-U``: ``unlearn()`` at its defaults (no fine-tuning);
- ``DISCEDIT-U (paper)``: the paper's procedure, ``recalibrate=False, coupled=False, refit_steps=0`` (the defaults
  before this benchmark);
- ``DISCEDIT-U + FT``: the defaults, then one fine-tuning epoch on the remaining data;
- ``BN re-estimation only``: nothing masked, BatchNorm statistics re-estimated on the calibration batches as
  DISCEDIT-U's defaults do (the control for what re-estimation alone changes);
- ``retain-FT``: one fine-tuning epoch on the remaining data, nothing masked;
- ``NegGrad+`` / ``random labels`` / ``SalUn``: :mod:`lightning_edit.unlearning` baselines, one epoch over the same
  remaining data paired with the forget samples;
- ``retrain``: the same network trained from scratch without the class, same recipe (the gold standard).

Metrics: FA and RA (test accuracy on the forgotten / remaining classes, points), MIA efficacy (share of the forgotten
training samples a threshold attack on the true-class confidence calls non-members; members: 1,000 remaining-class training
images, non-members: 1,000 held-out validation images), relearn steps (full-batch Adam steps on 32 forget training
images until half of 256 held-out forget images are right again; capped at ``--relearn-max-steps``), durability (forget accuracy after
``--durability-epochs`` epochs of training on ``--durability-images`` remaining training images), and edit seconds. Fine-tuning steps share one budget:
``--ft-images`` remaining training images per epoch, Adam at ``--ft-lr``.

    python benchmarks/unlearning_evaluation.py --arch resnet20 --seeds 3 --classes 0 3 8
    python benchmarks/unlearning_evaluation.py --arch rescnn_digits   # a user's residual CNN, seconds
    # rerun only the DISCEDIT-U arms after a default changed; the other arms' rows come from the stored run:
    python benchmarks/unlearning_evaluation.py --arch vgg11 --classes 1 8 --arms "DISCEDIT-U" "DISCEDIT-U + FT" \
        --reuse benchmarks/results/unlearning_evaluation_vgg11
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from _common import RESULTS, datamodule, set_threads, vgg, write_results
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_edit import ClassifierModule
from lightning_edit.data import DigitsDataModule
from lightning_edit.discedit import recalibrate_batchnorm, unlearn
from lightning_edit.discedit.unlearn import RECALIBRATION_BATCHES
from lightning_edit.models import resnet20
from lightning_edit.unlearning import (
    durability,
    forget_remaining_accuracy,
    mia_efficacy,
    neggrad_plus,
    random_labels,
    relearn_steps,
    salun,
    subsample,
)

ARMS = ("DISCEDIT-U", "DISCEDIT-U (paper)", "DISCEDIT-U + FT", "BN re-estimation only", "retain-FT", "NegGrad+",
        "random labels", "SalUn", "retrain")


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.short = (nn.Identity() if cin == cout and stride == 1
                      else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.short(x))


class ResCNN(nn.Module):
    """A user's own residual CNN (not a package model): stem, 3 residual blocks, pool, linear head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.b1, self.b2, self.b3 = Block(16, 16), Block(16, 32, 2), Block(32, 32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.b3(self.b2(self.b1(self.stem(x)))), 1).flatten(1))


def untrained_network(arch: str, side: int) -> nn.Module:
    """A freshly initialised ``arch`` (``resnet20``, ``vgg11`` at ¼ width, or the tests' ``rescnn_digits``) for
    ``side`` × ``side`` grey images and 10 classes."""
    if arch == "resnet20":
        return resnet20(in_channels=1, num_classes=10)
    return vgg(side) if arch == "vgg11" else ResCNN()


def fit(module, x, y, epochs: int, batch_size: int) -> float:
    t0 = time.perf_counter()
    L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
              enable_model_summary=False, enable_progress_bar=False, num_sanity_val_steps=0).fit(
        module, DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True))
    return time.perf_counter() - t0


def batches(x, y, size):
    return list(zip(x.split(size), y.split(size)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=["resnet20", "vgg11", "rescnn_digits"], default="resnet20")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--classes", type=int, nargs="+", default=[0, 3, 8])
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default 3; 10 for digits)")
    ap.add_argument("--train-subset", type=int, default=20000)
    ap.add_argument("--ft-images", type=int, default=4000)
    ap.add_argument("--ft-lr", type=float, default=1e-3)
    ap.add_argument("--relearn-max-steps", type=int, default=30)
    ap.add_argument("--durability-epochs", type=int, default=2)
    ap.add_argument("--durability-images", type=int, default=2000, help="remaining training images per durability epoch")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--out", default=None)
    ap.add_argument("--resummarise", default=None, metavar="DIR", help="only rewrite DIR's table and summary")
    ap.add_argument("--reuse", default=None, metavar="DIR",
                    help="run only --arms and take every other arm's rows from DIR's results.json (same seeds, "
                         "classes and networks: the base accuracies must match bit for bit)")
    args = ap.parse_args()
    if args.resummarise:
        import json

        directory = Path(args.resummarise)
        stored = json.loads((directory / "results.json").read_text())
        summarise(stored["rows"], argparse.Namespace(**{**stored["settings"], "resummarise": None}), directory)
        return
    set_threads()
    out = Path(args.out or RESULTS / f"unlearning_evaluation_{args.arch}")
    digits = args.arch == "rescnn_digits"
    epochs = args.epochs or (10 if digits else 3)
    bs = 64 if digits else 128
    if digits:
        dm, side = DigitsDataModule(batch_size=bs), 8
    else:
        dm, side = datamodule(batch_size=bs, train_subset=args.train_subset)
    dm.setup()
    xt, yt = dm.train_set.x, dm.train_set.y
    xv, yv = dm.val_set.x, dm.val_set.y
    xs, ys = dm.test_set.x, dm.test_set.y

    network = functools.partial(untrained_network, args.arch, side)
    opt = functools.partial(torch.optim.Adam, lr=2e-3 if not digits else 3e-3)
    ft_opt = functools.partial(torch.optim.Adam, lr=args.ft_lr)
    reused = []
    if args.reuse:
        import json

        stored = json.loads((Path(args.reuse) / "results.json").read_text())
        reused = [r for r in stored["rows"] if r["arm"] not in args.arms
                  and r["seed"] < args.seeds and r["class"] in args.classes]
        args.arms = [a for a in ARMS if a in args.arms or any(r["arm"] == a for r in reused)]
    rows = []
    for seed in range(args.seeds):
        L.seed_everything(seed, verbose=False)
        base = ClassifierModule(network(), optimizer=opt)
        train_s = fit(base, xt, yt, epochs, bs)
        base.eval()
        calib = batches(xt[: 16 * bs], yt[: 16 * bs], bs)
        print(f"seed {seed}: trained {args.arch} in {train_s:.0f} s", flush=True)
        for c in args.classes:
            gen = torch.Generator().manual_seed(seed)
            rem_x, rem_y = subsample((xt, yt), [c], exclude=True)
            ft = batches(*subsample((rem_x, rem_y), [c], args.ft_images, exclude=True, generator=gen), bs)
            forget_train = subsample((xt, yt), [c])
            forget_b = batches(*forget_train, bs)
            members = subsample((xt, yt), [c], 1000, exclude=True, generator=gen)
            non_members = subsample((xv, yv), [c], 1000, exclude=True, generator=gen)
            relearn_x = subsample((xt, yt), [c], 32, generator=gen)
            forget_val = subsample((xv, yv), [c], 256, generator=gen)
            f0, r0 = forget_remaining_accuracy(base, (xs, ys), [c])
            stored_pair = [r for r in reused if (r["seed"], r["class"]) == (seed, c)]
            if any((r["base_forget_acc"], r["base_remaining_acc"]) != (f0, r0) for r in stored_pair):
                raise SystemExit(f"--reuse {args.reuse}: seed {seed}, class {c} was measured on another network "
                                 "(base accuracies differ); run every arm instead")
            for arm in args.arms:
                if any(r["arm"] == arm for r in stored_pair):
                    rows += [r for r in stored_pair if r["arm"] == arm]
                    continue
                L.seed_everything(seed, verbose=False)
                row = {"seed": seed, "class": c, "arm": arm, "base_forget_acc": f0, "base_remaining_acc": r0}
                t0 = time.perf_counter()
                if arm.startswith("DISCEDIT-U"):
                    kwargs = dict(recalibrate=False, coupled=False, refit_steps=0) if arm.endswith("(paper)") else {}
                    edited, rep = unlearn(base, calib, [c], **kwargs)
                    row.update(ratio=rep.ratio, fraction_masked=rep.fraction_masked, refit_steps=rep.refit_steps)
                    if arm.endswith("FT"):
                        module = ClassifierModule(edited, optimizer=ft_opt)
                        fit(module, torch.cat([b[0] for b in ft]), torch.cat([b[1] for b in ft]), 1, bs)
                        edited = module.model
                    model = edited
                elif arm == "BN re-estimation only":
                    model = copy.deepcopy(base.model)
                    recalibrate_batchnorm(model, [b[0] for b in calib], RECALIBRATION_BATCHES)
                elif arm == "retain-FT":
                    module = ClassifierModule(copy.deepcopy(base.model), optimizer=ft_opt)
                    fit(module, torch.cat([b[0] for b in ft]), torch.cat([b[1] for b in ft]), 1, bs)
                    model = module.model
                elif arm == "NegGrad+":
                    model = neggrad_plus(base.model, forget_b, ft, lr=args.ft_lr)
                elif arm == "random labels":
                    model = random_labels(base.model, forget_b, ft, 10, lr=args.ft_lr, seed=seed)
                elif arm == "SalUn":
                    model = salun(base.model, forget_b, ft, 10, lr=args.ft_lr, seed=seed)
                else:
                    module = ClassifierModule(network(), optimizer=opt)
                    fit(module, rem_x, rem_y, epochs, bs)
                    model = module.model
                row["seconds"] = time.perf_counter() - t0
                model.eval()
                f1, r1 = forget_remaining_accuracy(model, (xs, ys), [c])
                row.update(forget_acc=f1, remaining_acc=r1, FA=f0 - f1, RA=r0 - r1)
                row["mia_efficacy"] = mia_efficacy(model, members, non_members, forget_train, seed=seed)
                row["relearn_steps"] = relearn_steps(model, relearn_x, forget_val, [c],
                                                     max_steps=args.relearn_max_steps, lr=args.ft_lr)
                row["durability"] = durability(model, ft[: max(1, args.durability_images // bs)], forget_val, [c],
                                               epochs=args.durability_epochs, lr=args.ft_lr)[-1]
                rows.append(row)
                print(f"  class {c} {arm:<19} forget {f1:.3f} (FA {100 * (f0 - f1):5.1f}) RA {100 * (r0 - r1):5.1f} "
                      f"MIA {row['mia_efficacy']:.2f} relearn {row['relearn_steps']} durability {row['durability']:.3f} "
                      f"masked {row.get('fraction_masked', float('nan')):.2f} ({row['seconds']:.1f} s)", flush=True)
    summarise(rows, args, out)


GAP_METRICS = {"forget_acc": "forget acc", "remaining_acc": "remaining acc", "mia_efficacy": "MIA efficacy",
               "durability": "durability forget acc"}
"""Metrics whose gap to retraining (points, per (seed, class) pair) is averaged, as in SalUn's summary."""


def summarise(rows, args, out: Path) -> None:
    def ms(vals, scale=1.0, digits=1):
        vals = [scale * v for v in vals if v is not None]
        if not vals:
            return "—"
        return f"{statistics.fmean(vals):.{digits}f} ± {statistics.stdev(vals) if len(vals) > 1 else 0.0:.{digits}f}"

    cap = args.relearn_max_steps
    steps = lambda r: r["relearn_steps"] if r["relearn_steps"] is not None else cap + 1  # noqa: E731
    retrain = {(r["seed"], r["class"]): r for r in rows if r["arm"] == "retrain"}
    lines = [f"{args.arch}: {args.seeds} seeds × forget classes {args.classes}; mean ± std over the "
             f"{args.seeds * len(args.classes)} (seed, class) pairs. FA = drop of forget-class test accuracy, RA = drop "
             "of remaining-class test accuracy (points); 'FA≤5 & RA≤2' counts pairs whose forget accuracy is at most 5% "
             f"with RA at most 2 points; relearn steps capped at {cap} (counted as {cap + 1}); 'gap' = mean absolute "
             "difference to retraining over forget acc, remaining acc, MIA efficacy and durability (points, SalUn's "
             "summary); time and relearn steps relative to retraining on the same pair.", "",
             "| arm | forget acc (%) | RA (points) | FA≤5 & RA≤2 | MIA efficacy (%) | relearn steps | relearn ÷ retrain "
             "| durability forget acc (%) | gap to retrain (points) | weights masked | seconds | time ÷ retrain |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    summary = {}
    for arm in args.arms:
        sel = [r for r in rows if r["arm"] == arm]
        if not sel:
            continue
        ok = sum(r["forget_acc"] <= 0.05 and r["RA"] <= 0.02 for r in sel)
        paired = [(r, retrain[(r["seed"], r["class"])]) for r in sel if (r["seed"], r["class"]) in retrain]
        gap = [statistics.fmean(abs(r[k] - g[k]) for k in GAP_METRICS) for r, g in paired]
        summary[arm] = {
            "forget_acc": ms([r["forget_acc"] for r in sel], 100), "RA": ms([r["RA"] for r in sel], 100),
            "meets_target": f"{ok}/{len(sel)}", "mia_efficacy": ms([r["mia_efficacy"] for r in sel], 100),
            "relearn_steps": ms([steps(r) for r in sel], 1, 1),
            "relearn_vs_retrain": ms([steps(r) / max(1, steps(g)) for r, g in paired], 1, 2),
            "durability": ms([r["durability"] for r in sel], 100), "gap_to_retrain": ms(gap, 100),
            "gap_to_retrain_mean": statistics.fmean(gap) * 100 if gap else None,
            "fraction_masked": ms([r.get("fraction_masked") for r in sel], 1, 2),
            "seconds": ms([r["seconds"] for r in sel], 1, 1),
            "time_vs_retrain": ms([r["seconds"] / g["seconds"] for r, g in paired], 1, 3)}
        s = summary[arm]
        lines.append(f"| {arm} | {s['forget_acc']} | {s['RA']} | {s['meets_target']} | {s['mia_efficacy']} | "
                     f"{s['relearn_steps']} | {s['relearn_vs_retrain']} | {s['durability']} | {s['gap_to_retrain']} | "
                     f"{s['fraction_masked']} | {s['seconds']} | {s['time_vs_retrain']} |")
    ranked = sorted((v["gap_to_retrain_mean"], k) for k, v in summary.items()
                    if k != "retrain" and v["gap_to_retrain_mean"] is not None)
    if ranked:
        lines += ["", "Smallest average gap to retraining: " + ", ".join(f"{k} {g:.1f}" for g, k in ranked) + "."]
    payload = {"settings": vars(args), "summary": summary, "rows": rows}
    write_results(out, "\n".join(lines), payload, quiet=False)


if __name__ == "__main__":
    main()
