"""DISCEDIT-U through the callback: does the forgotten class stay forgotten through its fine-tuning epoch and after
further training on the remaining classes?

The residual CNN of the test suite (``tests/conftest.py``: a user's own CNN with BatchNorm, 3 residual blocks) on
sklearn's digits, trained by Lightning, Adam lr 3e-3, ``--seeds`` seeds × ``--classes``. Two ways to use the callback
(``--modes``):

- ``mid``: ``DiscEditUnlearning([c], unlearn_epoch=2, finetune_epochs=1)`` in the training run itself;
- ``start``: a model trained ``--start-epochs`` epochs, then a second fit with ``unlearn_epoch="start",
  finetune_epochs=1`` (a trained checkpoint forgets a class).

Each at its defaults except ``forget_target`` (``--targets``) and ``refit_steps`` (``--refit-steps``: ``default``
or a number; 0 leaves the classifier row as trained), at every thread count of ``--threads`` (CPU kernels are not
bitwise reproducible across thread counts, so these are separate draws). Measured by the callback on the
validation split: forget accuracy right after masking and after the fine-tuning epoch, and RA (points of
remaining-class accuracy lost) at both. Then, with ``--durability-epochs`` > 0, the fine-tuned model trains that
many further epochs on the remaining classes' training images (Adam lr 1e-3, BatchNorm statistics updating;
:func:`lightning_edit.unlearning.durability`) and the forget-class accuracy on the test split after each is
recorded: the issue's bar is ≤ 5% after 3 epochs.

    python benchmarks/unlearning_midtraining_durability.py [--seeds 10] [--classes 3 5 8] [--modes mid start]
        [--refit-steps default 0] [--targets 0.02] [--threads 1] [--durability-epochs 3]

The first version of this table (``unlearning_midtraining_durability_digits``, before the classifier-row re-fit
existed) is ``--modes mid --refit-steps 0 --targets 0.05 0.02 --threads 1 2 --durability-epochs 0``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from _common import RESULTS, write_results

from lightning_edit import ClassifierModule
from lightning_edit.callbacks import DiscEditUnlearning
from lightning_edit.data import DigitsDataModule
from lightning_edit.unlearning import durability, subsample

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import ResCNN  # noqa: E402

KEYS = ("forget_acc_after", "forget_acc_after_ft", "RA", "RA_ft")


def trainer(max_epochs: int, callbacks=()) -> L.Trainer:
    return L.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     callbacks=list(callbacks), default_root_dir="/tmp/unlearning_midtraining")


def refit_value(text: str) -> int | None:
    return None if text == "default" else int(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--classes", type=int, nargs="+", default=[3, 5, 8])
    ap.add_argument("--modes", nargs="+", choices=["mid", "start"], default=["mid", "start"])
    ap.add_argument("--refit-steps", nargs="+", default=["default", "0"], help="'default' or a number of steps")
    ap.add_argument("--targets", type=float, nargs="+", default=[0.02])
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--start-epochs", type=int, default=6, help="training epochs before a 'start' edit")
    ap.add_argument("--durability-epochs", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "unlearning_durability_digits"))
    args = ap.parse_args()
    refits = [refit_value(r) for r in args.refit_steps]
    warnings.filterwarnings("ignore")
    dm = DigitsDataModule()
    dm.setup()
    test = (dm.test_set.x, dm.test_set.y)
    optimizer = functools.partial(torch.optim.Adam, lr=3e-3)
    remaining_batches = {c: list(zip(*[t.split(64) for t in subsample((dm.train_set.x, dm.train_set.y), [c], exclude=True)]))
                         for c in args.classes}
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for seed in range(args.seeds):
            trained = None
            if "start" in args.modes:
                L.seed_everything(seed, verbose=False)
                trained = ClassifierModule(ResCNN(), optimizer=optimizer)
                trainer(args.start_epochs).fit(trained, datamodule=DigitsDataModule())
            for mode in args.modes:
                for cls in args.classes:
                    for target in args.targets:
                        for refit in refits:
                            t0 = time.perf_counter()
                            L.seed_everything(seed, verbose=False)
                            cb_args = dict(finetune_epochs=1, plot=False, forget_target=target, refit_steps=refit)
                            if mode == "mid":
                                module = ClassifierModule(ResCNN(), optimizer=optimizer)
                                cb = DiscEditUnlearning([cls], unlearn_epoch=2, **cb_args)
                                trainer(10, [cb]).fit(module, datamodule=DigitsDataModule())
                            else:
                                module = copy.deepcopy(trained)
                                cb = DiscEditUnlearning([cls], unlearn_epoch="start", **cb_args)
                                trainer(2, [cb]).fit(module, datamodule=DigitsDataModule())
                            row = {"threads": threads, "seed": seed, "mode": mode, "class": cls, "target": target,
                                   "refit_steps": "default" if refit is None else refit,
                                   "refit_steps_run": int(cb.report["refit_steps"]),
                                   **{k: float(cb.report[k]) for k in KEYS}}
                            row["seconds"] = time.perf_counter() - t0
                            if args.durability_epochs > 0:
                                module.model.eval()
                                row["durability"] = durability(module.model, remaining_batches[cls], test, [cls],
                                                               epochs=args.durability_epochs, lr=1e-3)
                            rows.append(row)
                            print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    summarise(rows, args)


def summarise(rows: list[dict], args) -> None:
    epochs = args.durability_epochs
    header = ("| mode | refit_steps | forget_target | runs | forget acc after masking (mean / max) | runs > 10% after "
              "masking | forget acc after fine-tuning (mean / max) | runs > 5% after fine-tuning | RA after masking | "
              "RA after fine-tuning |")
    if epochs > 0:
        header += f" forget acc after {epochs} further epochs (mean / max) | runs > 5% after {epochs} further epochs |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    summary = {}
    groups = sorted({(r["mode"], str(r["refit_steps"]), r["target"]) for r in rows},
                    key=lambda g: (args.modes.index(g[0]), args.refit_steps.index(g[1]), args.targets.index(g[2])))
    for mode, refit, target in groups:
        rs = [r for r in rows if (r["mode"], str(r["refit_steps"]), r["target"]) == (mode, refit, target)]
        after, ft = [r["forget_acc_after"] for r in rs], [r["forget_acc_after_ft"] for r in rs]
        s = {"runs": len(rs), "after_mean": statistics.fmean(after), "after_max": max(after),
             "after_over_10": sum(a > 0.1 for a in after), "ft_mean": statistics.fmean(ft), "ft_max": max(ft),
             "ft_over_5": sum(a > 0.05 for a in ft), "RA_mean": statistics.fmean(r["RA"] for r in rs),
             "RA_ft_mean": statistics.fmean(r["RA_ft"] for r in rs),
             "refit_runs": sum(r["refit_steps_run"] > 0 for r in rs)}
        line = (f"| {mode} | {refit} | {target} | {s['runs']} | {100 * s['after_mean']:.1f}% / {100 * s['after_max']:.1f}% | "
                f"{s['after_over_10']} | {100 * s['ft_mean']:.1f}% / {100 * s['ft_max']:.1f}% | {s['ft_over_5']} | "
                f"{100 * s['RA_mean']:+.1f} | {100 * s['RA_ft_mean']:+.1f} |")
        if epochs > 0:
            last = [r["durability"][-1] for r in rs]
            s.update(durability_mean=statistics.fmean(last), durability_max=max(last),
                     durability_over_5=sum(a > 0.05 for a in last))
            line += f" {100 * s['durability_mean']:.1f}% / {100 * s['durability_max']:.1f}% | {s['durability_over_5']} |"
        summary[f"{mode}/{refit}/{target}"] = s
        lines.append(line)
    lines += ["", "Forget and remaining accuracy after masking and after the fine-tuning epoch: validation split, "
              "measured by the callback; RA in points lost (negative: the other classes improved). Further epochs: "
              "Adam lr 1e-3 on the remaining classes' training images, forget accuracy on the test split. "
              "refit_steps 'default' re-fits the classifier row only where the masks alone met the target on the "
              "calibration batches."]
    write_results(Path(args.out), "\n".join(lines), {"settings": vars(args), "summary": summary, "rows": rows},
                  quiet=False)


if __name__ == "__main__":
    main()
