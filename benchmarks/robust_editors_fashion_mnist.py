"""Benchmark 6: what an edit costs in robustness, by editor (Brown et al. 2023), on Fashion-MNIST.

Edit task: fix the first ``--edits`` misclassified validation shirts (class 6) of a VGG-11 (¼ width).
For each editor: edit success, edit generalisation (noisy copies of the edit inputs; held-out
misclassified test shirts), and the change of clean, L∞-PGD and corruption accuracy on test images
against the unedited model, plus the time per edit.

    python benchmarks/robust_editors_fashion_mnist.py [--epochs 3] [--edits 32] [--eps 0.03]
"""

from __future__ import annotations

import argparse
import functools
import time

import lightning as L
import torch
from _common import datamodule, vgg

from lightning_edit import ClassifierModule
from lightning_edit.robust import FineTuneEditor, InterpolationEditor, LowRankEditor, report_change, robustness_report

LAYER = "features.25"  # the last conv layer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-subset", type=int, default=20000)
    ap.add_argument("--edits", type=int, default=32)
    ap.add_argument("--eps", type=float, default=0.03)
    ap.add_argument("--test-images", type=int, default=2000)
    ap.add_argument("--edit-class", type=int, default=6)
    args = ap.parse_args()
    L.seed_everything(0, verbose=False)
    dm, side = datamodule(batch_size=128, train_subset=args.train_subset)
    dm.setup()
    module = ClassifierModule(vgg(side), optimizer=functools.partial(torch.optim.Adam, lr=2e-3))
    L.Trainer(max_epochs=args.epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0).fit(module, dm)
    model = module.model.eval()

    def misclassified(x, y):
        with torch.no_grad():
            wrong = (torch.cat([model(b).argmax(1) for b in x.split(1000)]) != y) & (y == args.edit_class)
        return x[wrong], y[wrong]

    ex, ey = misclassified(dm.val_set.x, dm.val_set.y)
    ex, ey = ex[: args.edits], ey[: args.edits]
    hx, hy = misclassified(dm.test_set.x, dm.test_set.y)
    test = list(zip(dm.test_set.x[: args.test_images].split(500), dm.test_set.y[: args.test_images].split(500)))
    std = float(dm.std.mean())
    kw = dict(eps=args.eps, input_std=std, edit_x=ex, edit_y=ey)
    base = robustness_report(model, test, **kw)
    print(f"edit set: {len(ex)} misclassified class-{args.edit_class} validation images; held out: {len(hx)} test images")
    print(f"unedited: {base}")

    editors = {
        "fine-tune all": FineTuneEditor(lr=1e-3, max_steps=300),
        f"fine-tune {LAYER}": FineTuneEditor([LAYER], lr=1e-3, max_steps=300),
        f"1-LI {LAYER}": InterpolationEditor(LAYER, lr=1e-3, max_steps=300),
        "1-LI, target 0.75": InterpolationEditor(LAYER, target_accuracy=0.75, lr=1e-3, max_steps=300),
        f"rank-1 {LAYER}": LowRankEditor(LAYER, rank=1, lr=1e-2, max_steps=300),
        f"rank-4 {LAYER}": LowRankEditor(LAYER, rank=4, lr=1e-2, max_steps=300),
    }
    print(f"\n{'editor':<28} {'success':>7} {'gen noisy':>9} {'held-out':>8} {'Δclean':>7} {'ΔPGD':>6} "
          f"{'Δnoise':>7} {'Δblur':>6} {'Δcontr':>7} {'ms/edit':>8}")
    for name, editor in editors.items():
        t0 = time.perf_counter()
        edited, result = editor.edit(model, ex, ey)
        ms = 1000 * (time.perf_counter() - t0)
        after = robustness_report(edited, test, **kw)
        change = report_change(after, base)
        with torch.no_grad():
            held = float((edited(hx).argmax(1) == hy).float().mean()) if len(hx) else float("nan")
        if isinstance(editor, InterpolationEditor):
            name = f"{name} (α={editor.alpha:.2f})"
        print(f"{name:<28} {after['edit_success']:>7.2f} {after['edit_generalisation']:>9.2f} {held:>8.2f} "
              f"{100 * change['clean']:>7.1f} {100 * change['pgd']:>6.1f} {100 * change['corruption/gaussian_noise']:>7.1f} "
              f"{100 * change['corruption/blur']:>6.1f} {100 * change['corruption/contrast']:>7.1f} {ms:>8.0f}", flush=True)
    print("Δ columns: change in accuracy points (edited - unedited) on the test images.")


if __name__ == "__main__":
    main()
