"""A model trained on ten classes, specialised to a subset: does DISCEDIT's class-conditional bound (one-vs-rest within
the subset) pick better channels than criteria that cannot see which classes a channel serves?

For each architecture and seed the 10-class network is trained as in ``accuracy_fashion_mnist.py`` (Adam 2e-3,
3 epochs, 20,000 training images). For each subset (fixed below before any run) and parameter sparsity, every arm
gets the same data and the same head removal: 16 calibration batches of the subset's training images (drawn with the
seed) for scoring and BatchNorm recalibration, the classifier cut to the subset's rows, and accuracy among the
subset's logits on the subset's test images. Arms: the default candidates of ``importance="auto"`` (DISCEDIT at both
feature sites, torch-pruning L2, BN scale, LAMP global, Taylor, all on the subset's data) through
:func:`~lightning_edit.discedit.select_and_prune` with ``classes=``, random, and ``auto`` itself (the candidate with
the best accuracy on the subset's validation images). Columns: BN-recalibrated with no fine-tuning, and after one
fine-tuning epoch (Adam 2e-3) on the subset's training images.

    python benchmarks/subset_specialisation_fashion_mnist.py [--archs vgg11_w0.25 resnet20] [--seeds 3]
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
from _common import ARCHS, RESULTS, mean_std, pruning_setup, write_results
from accuracy_fashion_mnist import test_acc, train_base

from lightning_edit import ClassifierModule
from lightning_edit.discedit import (
    DEFAULT_CANDIDATES,
    channel_scores,
    keep_classes,
    prunable_layers,
    prune_channels,
    select_and_prune,
    subset_batches,
)

SUBSETS = {  # fixed before any run: confusable groups and easy ones, 2-5 classes
    "tops {T-shirt, pullover, coat, shirt}": [0, 2, 4, 6],
    "footwear {sandal, sneaker, ankle boot}": [5, 7, 9],
    "{T-shirt, shirt}": [0, 6],
    "{pullover, coat}": [2, 4],
    "easy {trouser, bag}": [1, 8],
    "easy {trouser, dress, sandal, bag, ankle boot}": [1, 3, 5, 8, 9],
}
ARMS = (*DEFAULT_CANDIDATES, "random", "auto")


def subset_data(x: torch.Tensor, y: torch.Tensor, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples of ``classes``, labels mapped ``classes[j] -> j``."""
    return next(subset_batches([(x, y)], classes))


def calibration(dm, classes: list[int], seed: int, n: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` batches of 128 of the subset's training images (original labels), drawn with ``seed``."""
    idx = torch.isin(dm.train_set.y, torch.tensor(classes)).nonzero().flatten()
    idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))][: n * 128]
    return list(zip(dm.train_set.x[idx].split(128), dm.train_set.y[idx].split(128)))


def fine_tune(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.nn.Module:
    """One epoch of Adam 2e-3 (the training recipe) on the subset's training images, labels mapped; a copy."""
    module = ClassifierModule(copy.deepcopy(model).train(), optimizer=functools.partial(torch.optim.Adam, lr=2e-3))
    L.seed_everything(seed, verbose=False)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=128, shuffle=True)
    L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
              enable_model_summary=False, enable_progress_bar=False).fit(module, loader)
    return module.model.eval()


def summarise(results: dict[str, list], archs: list[str], sparsities: list[float],
              cols: list[str]) -> tuple[str, dict[str, dict]]:
    """The table and the summary: per subset row, DISCEDIT (conv site, the paper's) minus the best peer (L2, BN scale,
    LAMP, Taylor, random; means over seeds), and ``auto`` minus the best single candidate; their means over subsets,
    and how many rows ``auto`` holds within 0.5 points."""
    names = {"recal": "BN-recalibrated", "ft": "1 fine-tuning epoch"}
    peers = [a for a in ARMS if a not in ("discedit", "discedit_activation", "auto")]
    lines: list[str] = []
    summary: dict[str, dict] = {}
    for arch in archs:
        for col in cols:
            lines += ["", f"**{arch}, {names[col]}**", "",
                      "| subset | sparsity | " + " | ".join(ARMS) + " | DISCEDIT − best peer | auto − best candidate |",
                      "|---|---|" + "---|" * (len(ARMS) + 2)]
            for s in sparsities:
                gaps, auto_gaps = [], []
                for label in SUBSETS:
                    key = f"{arch}|{label}|{s}"
                    cells = {a: results.get(f"{key}|{a}|{col}", []) for a in ARMS}
                    if not cells["discedit"]:
                        continue
                    mean = {a: statistics.fmean(v) for a, v in cells.items()}
                    gaps.append(100 * (mean["discedit"] - max(mean[a] for a in peers)))
                    auto_gaps.append(100 * (mean["auto"] - max(mean[a] for a in DEFAULT_CANDIDATES)))
                    lines.append(f"| {label} | {s:.0%} | " + " | ".join(mean_std(cells[a]) for a in ARMS)
                                 + f" | {gaps[-1]:+.1f} | {auto_gaps[-1]:+.1f} |")
                if gaps:
                    summary[f"{arch}|{s}|{col}"] = {
                        "mean_gap_points": statistics.fmean(gaps), "subsets": len(gaps),
                        "auto_mean_gap_points": statistics.fmean(auto_gaps),
                        "auto_rows_within_0.5": sum(g >= -0.5 for g in auto_gaps)}
                    lines.append(f"| **mean over subsets** | {s:.0%} | " + " | ".join("" for _ in ARMS)
                                 + f" | **{statistics.fmean(gaps):+.1f}** | **{statistics.fmean(auto_gaps):+.1f}** "
                                 f"({sum(g >= -0.5 for g in auto_gaps)} of {len(gaps)} within 0.5) |")
    return "\n".join(lines).strip(), summary


def resummarise(directory: Path) -> None:
    """Rewrite ``table.md`` and the summary of a finished run from its ``results.json`` (the results unchanged)."""
    import json

    payload = json.loads((directory / "results.json").read_text())
    settings = payload["settings"]
    cols = ["recal"] + ([] if settings.get("no_finetune") else ["ft"])
    table, payload["summary"] = summarise(payload["results"], settings["archs"], settings["sparsities"], cols)
    write_results(directory, table, payload, quiet=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", nargs="+", default=["vgg11_w0.25", "resnet20"], choices=list(ARCHS))
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.7, 0.85, 0.95], help="parameter sparsities")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-subset", type=int, default=20000)
    ap.add_argument("--no-finetune", action="store_true", help="skip the fine-tuned column")
    ap.add_argument("--out", default=None)
    ap.add_argument("--resummarise", default=None, metavar="DIR", help="only rewrite DIR's table and summary")
    args = ap.parse_args()
    if args.resummarise:
        return resummarise(Path(args.resummarise))
    out = Path(args.out or RESULTS / "subset_specialisation_fashion_mnist")
    dm, side, x_test, y_test, example = pruning_setup(args.train_subset)
    results: dict[str, list] = {}
    cols = ["recal"] + ([] if args.no_finetune else ["ft"])

    def write(quiet: bool = True) -> None:
        table, summary = summarise(results, args.archs, args.sparsities, cols)
        write_results(out, table, {"settings": vars(args), "subsets": SUBSETS, "summary": summary, "results": results},
                      quiet)

    for arch in args.archs:
        family, width = ARCHS[arch]
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            base = train_base(seed, dm, side, width, args.epochs, family).model.eval()
            print(f"{arch} seed {seed}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
            for label, classes in SUBSETS.items():
                calib = calibration(dm, classes, 1000 + seed)
                selection = list(zip(dm.val_set.x.split(256), dm.val_set.y.split(256)))
                xs, ys = subset_data(x_test, y_test, classes)
                x_ft, y_ft = subset_data(dm.train_set.x, dm.train_set.y, classes)
                for s in args.sparsities:
                    key = f"{arch}|{label}|{s}"
                    t1 = time.perf_counter()

                    def record(name: str, pruned: torch.nn.Module, key: str = key) -> None:
                        results.setdefault(f"{key}|{name}|recal", []).append(test_acc(pruned, xs, ys))
                        if "ft" in cols:
                            tuned = fine_tune(pruned, x_ft, y_ft, seed)
                            results.setdefault(f"{key}|{name}|ft", []).append(test_acc(tuned, xs, ys))

                    _, report = select_and_prune(base, example, calib, selection, s, min_channels=1, classes=classes,
                                                 on_candidate=record)
                    rnd = copy.deepcopy(base)
                    keep_classes(rnd, classes)  # the head first, as select_and_prune does: the same parameter budget
                    layers = prunable_layers(rnd)
                    scores = channel_scores(rnd, layers, "random", generator=torch.Generator().manual_seed(seed))
                    prune_channels(rnd, example, scores, s, layers, "parameters", min_channels=1,
                                   recalibration_batches=list(subset_batches(calib, classes)))
                    record("random", rnd)
                    for col in cols:
                        results.setdefault(f"{key}|auto|{col}", []).append(results[f"{key}|{report.importance}|{col}"][-1])
                    results.setdefault(f"{key}|auto|chosen", []).append(report.importance)
                    print(f"  {label} {s:.0%}: " + ", ".join(
                        f"{a} {results[f'{key}|{a}|recal'][-1]:.3f}" + (f"/{results[f'{key}|{a}|ft'][-1]:.3f}" if "ft" in cols else "")
                        for a in ARMS) + f" (auto chose {report.importance}); {time.perf_counter() - t1:.0f} s", flush=True)
                write()  # after every subset: a long run interrupted keeps what it measured
    write(quiet=False)


if __name__ == "__main__":
    main()
