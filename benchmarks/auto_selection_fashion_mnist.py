"""Does ``importance="auto"`` hand the user the most accurate pruned model? Criterion selection on a held-out split
against every single candidate criterion, at the same parameter sparsity, BN-recalibrated, no fine-tuning.

For each architecture and seed the network is trained anew (as in ``accuracy_fashion_mnist.py``: Adam 2e-3, 3 epochs,
20,000 training images), the 16 calibration batches are drawn with the same seed as there, and
:func:`lightning_edit.discedit.select_and_prune` prunes a copy with every default candidate, recalibrates it on the
calibration batches and measures it on the datamodule's **validation split** (5,000 training images held out, never
trained on; the test set is not seen). Its ``on_candidate`` hook measures every candidate on the test set too, so the
selected model's test accuracy is compared with the best single candidate's in the same run. ``cost`` is the
selection's total seconds divided by the seconds of the DISCEDIT candidate alone (one scoring, pruning, recalibration
and measurement pass).

    python benchmarks/auto_selection_fashion_mnist.py [--archs vgg11_w0.25 vgg11_w0.5 resnet20] [--seeds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from _common import ARCHS, RESULTS, mean_std, pruning_setup, write_results
from accuracy_fashion_mnist import sample_batches, test_acc, train_base

from lightning_edit.discedit import DEFAULT_CANDIDATES, select_and_prune



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.3, 0.5, 0.7], help="parameter sparsities")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-subset", type=int, default=20000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = Path(args.out or RESULTS / "auto_selection_fashion_mnist")
    dm, side, x_test, y_test, example = pruning_setup(args.train_subset)
    selection = list(zip(dm.val_set.x.split(128), dm.val_set.y.split(128)))
    results: dict[str, list] = {}

    def write(quiet: bool = True) -> None:
        lines = ["| network | param. sparsity | auto (selected: count) | best single candidate (test) | auto − best "
                 "(points) | cost (× one DISCEDIT pass) | " + " | ".join(DEFAULT_CANDIDATES) + " |",
                 "|---|---|---|---|---|---|" + "---|" * len(DEFAULT_CANDIDATES)]
        summary = {}
        for arch in args.archs:
            for s in args.sparsities:
                key = f"{arch}|{s}"
                if f"{key}|auto|test" not in results:
                    continue
                per = {c: results[f"{key}|{c}|test"] for c in DEFAULT_CANDIDATES}
                best = max(per, key=lambda c: statistics.fmean(per[c]))
                gap = 100 * (statistics.fmean(results[f"{key}|auto|test"]) - statistics.fmean(per[best]))
                chosen = results[f"{key}|auto|chosen"]
                counts = ", ".join(f"{c} {chosen.count(c)}" for c in dict.fromkeys(chosen))
                summary[key] = {"gap_points": gap, "best_single": best}
                lines.append(f"| {arch} | {s:.0%} | {mean_std(results[f'{key}|auto|test'])} ({counts}) | {best} "
                             f"{mean_std(per[best])} | {gap:+.1f} | {statistics.fmean(results[f'{key}|auto|cost']):.1f} | "
                             + " | ".join(mean_std(per[c]) for c in DEFAULT_CANDIDATES) + " |")
        write_results(out, "\n".join(lines), {"settings": vars(args), "summary": summary, "results": results}, quiet)

    for arch in args.archs:
        family, width = ARCHS[arch]
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            base = train_base(seed, dm, side, width, args.epochs, family)
            model = base.model.eval()
            print(f"{arch} seed {seed}: trained in {time.perf_counter() - t0:.0f} s; dense test "
                  f"{test_acc(model, x_test, y_test):.4f}", flush=True)
            calib = sample_batches(dm, 16, 1000 + seed)
            for s in args.sparsities:
                key = f"{arch}|{s}"

                def on_candidate(name: str, pruned: torch.nn.Module, key: str = key) -> None:
                    results.setdefault(f"{key}|{name}|test", []).append(test_acc(pruned, x_test, y_test))

                torch.manual_seed(seed)
                _, report = select_and_prune(model, example, calib, selection, s, sparsity_type="parameters",
                                             min_channels=1, on_candidate=on_candidate)
                for name in DEFAULT_CANDIDATES:
                    results.setdefault(f"{key}|{name}|selection", []).append(report.table[name])
                    results.setdefault(f"{key}|{name}|seconds", []).append(report.seconds[name])
                winner_test = results[f"{key}|{report.importance}|test"][-1]
                results.setdefault(f"{key}|auto|test", []).append(winner_test)
                results.setdefault(f"{key}|auto|chosen", []).append(report.importance)
                results.setdefault(f"{key}|auto|cost", []).append(report.total_seconds / report.seconds["discedit"])
                print(f"  {s:.0%}: chose {report.importance} (selection {report.table[report.importance]:.4f}, test "
                      f"{winner_test:.4f}); test of each: "
                      + ", ".join(f"{n} {results[f'{key}|{n}|test'][-1]:.4f}" for n in DEFAULT_CANDIDATES)
                      + f"; {report.total_seconds:.1f} s", flush=True)
            write()
    write(quiet=False)


if __name__ == "__main__":
    main()
