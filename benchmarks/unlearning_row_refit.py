"""Benchmark: how many steps DISCEDIT-U's classifier-row re-fit takes by default, chosen on held-out networks.

After masking, ``unlearn()`` re-fits the forget class's classifier row on the calibration batches' remaining-class
samples (:func:`~lightning_edit.discedit.unlearn.refit_forget_rows`), as a network retrained without the class would
have it. The number of steps is chosen here on networks that no evaluation table uses (seeds from ``--first-seed``,
default 3; the evaluation tables use seeds 0-2), on the validation split: for each (seed, class) pair, the masked
network's rows get each number of steps in ``--steps``, and the relearn time (full-batch Adam steps on 32 forget
training images until half of 256 held-out validation forget images are right again, as in
``unlearning_evaluation.py``, capped at ``--relearn-max-steps``) is divided by the same pair's retrained network's.
Forget accuracy and RA are read on the validation split too. Per architecture, the table marks the fewest steps whose
mean relearn ÷ retrain is at least 1 (as slow to relearn as retraining), with forget accuracy and RA no worse than
without the re-fit. The package default (``DEFAULT_REFIT_STEPS``) is ``--combine``'s choice: the fewest steps at which
the architectures' mean relearn ÷ retrain, each architecture weighted equally, is at least 1 (rule fixed before the
VGG-11 run was read).

    python benchmarks/unlearning_row_refit.py --arch resnet20 --classes 0 1 3 8
    python benchmarks/unlearning_row_refit.py --arch vgg11 --classes 0 1 3 8
    python benchmarks/unlearning_row_refit.py --arch rescnn_digits --seeds 3 --classes 0 1 2 3 4 5 6 7 8 9
    python benchmarks/unlearning_row_refit.py --combine   # the default, from the three results files
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
from pathlib import Path

import lightning as L
import torch
from _common import RESULTS, datamodule, set_threads, write_results
from unlearning_evaluation import batches, fit, untrained_network

from lightning_edit import ClassifierModule
from lightning_edit.data import DigitsDataModule
from lightning_edit.discedit import unlearn
from lightning_edit.discedit.unlearn import refit_forget_rows
from lightning_edit.unlearning import forget_remaining_accuracy, relearn_steps, subsample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=["resnet20", "vgg11", "rescnn_digits"], default="resnet20")
    ap.add_argument("--first-seed", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--classes", type=int, nargs="+", default=[0, 1, 3, 8])
    ap.add_argument("--steps", type=int, nargs="+", default=[0, 25, 50, 100, 200, 400])
    ap.add_argument("--relearn-max-steps", type=int, default=60)
    ap.add_argument("--train-subset", type=int, default=20000)
    ap.add_argument("--out", default=None)
    ap.add_argument("--combine", action="store_true", help="choose the default from the per-architecture results")
    args = ap.parse_args()
    if args.combine:
        combine(RESULTS / "unlearning_row_refit")
        return
    set_threads()
    out = Path(args.out or RESULTS / f"unlearning_row_refit_{args.arch}")
    digits = args.arch == "rescnn_digits"
    epochs, bs = (10, 64) if digits else (3, 128)
    if digits:
        dm = DigitsDataModule(batch_size=bs)
        side = 8
    else:
        dm, side = datamodule(batch_size=bs, train_subset=args.train_subset)
    dm.setup()
    xt, yt = dm.train_set.x, dm.train_set.y
    xv, yv = dm.val_set.x, dm.val_set.y

    network = functools.partial(untrained_network, args.arch, side)
    opt = functools.partial(torch.optim.Adam, lr=3e-3 if digits else 2e-3)
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        L.seed_everything(seed, verbose=False)
        base = ClassifierModule(network(), optimizer=opt)
        fit(base, xt, yt, epochs, bs)
        base.eval()
        calib = batches(xt[: 16 * bs], yt[: 16 * bs], bs)
        for c in args.classes:
            gen = torch.Generator().manual_seed(seed)
            relearn_x = subsample((xt, yt), [c], 32, generator=gen)
            forget_val = subsample((xv, yv), [c], 256, generator=gen)
            f0, r0 = forget_remaining_accuracy(base, (xv, yv), [c])
            L.seed_everything(seed, verbose=False)
            retrained = ClassifierModule(network(), optimizer=opt)
            fit(retrained, *subsample((xt, yt), [c], exclude=True), epochs, bs)
            retrained.eval()
            retrain_steps = relearn_steps(retrained.model, relearn_x, forget_val, [c], max_steps=args.relearn_max_steps)
            masked, _ = unlearn(base, calib, [c], refit_steps=0)
            for steps in args.steps:
                model = copy.deepcopy(masked)
                refit_forget_rows(model, calib, [c], steps)
                model.eval()
                f1, r1 = forget_remaining_accuracy(model, (xv, yv), [c])
                n = relearn_steps(model, relearn_x, forget_val, [c], max_steps=args.relearn_max_steps)
                rows.append({"seed": seed, "class": c, "steps": steps, "val_base_forget_acc": f0, "val_forget_acc": f1,
                             "val_RA": r0 - r1, "relearn_steps": n, "retrain_relearn_steps": retrain_steps})
                print(f"seed {seed} class {c} steps {steps:>3}: val forget {f1:.3f} RA {100 * (r0 - r1):+.1f} "
                      f"relearn {n} (retrain {retrain_steps})", flush=True)
    summarise(rows, args, out)


def summarise(rows: list[dict], args, out: Path) -> None:
    cap = args.relearn_max_steps
    count = lambda n: cap + 1 if n is None else n  # noqa: E731

    def ms(vals, scale=1.0, digits=1):
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.fmean(vals) * scale:.{digits}f} ± {sd * scale:.{digits}f}"

    summary = {}
    for steps in args.steps:
        sel = [r for r in rows if r["steps"] == steps]
        ratios = [count(r["relearn_steps"]) / max(1, count(r["retrain_relearn_steps"])) for r in sel]
        summary[str(steps)] = {"forget_acc": ms([r["val_forget_acc"] for r in sel], 100),
                               "forget_acc_mean": statistics.fmean(r["val_forget_acc"] for r in sel),
                               "RA": ms([r["val_RA"] for r in sel], 100), "RA_mean": statistics.fmean(r["val_RA"] for r in sel),
                               "relearn_steps": ms([count(r["relearn_steps"]) for r in sel]),
                               "retrain_relearn_steps": ms([count(r["retrain_relearn_steps"]) for r in sel]),
                               "relearn_vs_retrain": ms(ratios, 1, 2), "relearn_vs_retrain_mean": statistics.fmean(ratios)}
    none = summary[str(min(args.steps))]
    ok = [s for s in sorted(args.steps) if summary[str(s)]["relearn_vs_retrain_mean"] >= 1.0
          and summary[str(s)]["forget_acc_mean"] <= none["forget_acc_mean"] + 1e-9
          and summary[str(s)]["RA_mean"] <= none["RA_mean"] + 1e-9]
    chosen = ok[0] if ok else max(args.steps)
    pairs = len({(r["seed"], r["class"]) for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"{args.arch}: DISCEDIT-U's masks at their defaults, then the forget class's classifier row re-fitted for the given "
             f"Adam steps; {pairs} (seed, class) pairs on held-out networks (seeds {seeds}, classes {args.classes}), "
             "validation split. Forget accuracy (%) and RA (points), mean ± std; relearn steps capped at "
             f"{cap} (counted as {cap + 1}); relearn ÷ retrain against the same pair's retrained network.", "",
             "| re-fit steps | val forget acc | val RA | relearn steps | retrain relearn steps | relearn ÷ retrain |",
             "|---|---|---|---|---|---|"]
    for steps in args.steps:
        s = summary[str(steps)]
        label = f"**{steps}** (fewest at ≥ 1 here)" if steps == chosen else str(steps)
        lines.append(f"| {label} | {s['forget_acc']} | {s['RA']} | {s['relearn_steps']} | {s['retrain_relearn_steps']} "
                     f"| {s['relearn_vs_retrain']} |")
    write_results(out, "\n".join(lines), {"settings": vars(args), "chosen_steps": chosen, "summary": summary,
                                          "rows": rows}, quiet=False)


ARCHS = ("resnet20", "vgg11", "rescnn_digits")


def combine(out: Path) -> None:
    import json

    stored = {a: json.loads((RESULTS / f"unlearning_row_refit_{a}" / "results.json").read_text()) for a in ARCHS}
    grid = sorted(set.intersection(*(set(map(int, d["summary"])) for d in stored.values())))
    mean = {s: statistics.fmean(d["summary"][str(s)]["relearn_vs_retrain_mean"] for d in stored.values()) for s in grid}
    chosen = next((s for s in grid if mean[s] >= 1.0), max(grid))
    lines = ["DISCEDIT-U's classifier-row re-fit: relearn ÷ retrain (mean over each architecture's held-out pairs, "
             "validation split) by re-fit steps; the default is the fewest steps at which the architectures' mean is "
             "at least 1.", "",
             "| re-fit steps | " + " | ".join(ARCHS) + " | mean over architectures |", "|---|" + "---|" * (len(ARCHS) + 1)]
    for s in grid:
        label = f"**{s}** (default)" if s == chosen else str(s)
        lines.append(f"| {label} | " + " | ".join(stored[a]["summary"][str(s)]["relearn_vs_retrain"] for a in ARCHS)
                     + f" | {mean[s]:.2f} |")
    write_results(out, "\n".join(lines), {"chosen_steps": chosen, "mean_relearn_vs_retrain": {str(s): mean[s] for s in grid},
                                           "per_architecture": {a: stored[a]["chosen_steps"] for a in ARCHS}}, quiet=False)


if __name__ == "__main__":
    main()
