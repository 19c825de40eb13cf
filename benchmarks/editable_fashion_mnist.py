"""Benchmark 5: Editable Training vs normal training on Fashion-MNIST, same CNN, same SGD editor on the
last two layers. Reports test error, edit success rate, mean steps and drawdown over N edits of held-out
images to random wrong labels, median edit latency, and the training-time overhead per epoch (ratio).

    python benchmarks/editable_fashion_mnist.py [--epochs 5] [--train-subset N] [--edits 200] [--coef 0.03]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import lightning as L
import torch
from _common import datamodule

from lightning_edit import EditableModule
from lightning_edit.editable import GradientEditor, evaluate_edits, random_wrong_labels
from lightning_edit.models import SmallCNN

LAST = ["hidden.*", "classifier.*"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--train-subset", type=int, default=None)
    ap.add_argument("--edits", type=int, default=200)
    ap.add_argument("--drawdown-images", type=int, default=2000)
    ap.add_argument("--coef", type=float, default=0.03)
    ap.add_argument("--editor-lr", type=float, default=0.1)
    ap.add_argument("--learn-lr", action="store_true", help="learn the editor's lr during editable training")
    args = ap.parse_args()
    dm, side = datamodule(batch_size=128, train_subset=args.train_subset)
    dm.setup()
    xs, ys = dm.test_set.x, dm.test_set.y
    test = list(zip(xs[: args.drawdown_images].split(500), ys[: args.drawdown_images].split(500)))
    edit_x = xs[-args.edits :]
    edit_y = random_wrong_labels(ys[-args.edits :], 10, torch.Generator().manual_seed(0))
    rows, trained = {}, {}
    for name, coef in (("editable", args.coef), ("normal", 0.0)):
        L.seed_everything(0, verbose=False)
        module = EditableModule(
            SmallCNN(1, 10), optimizer=functools.partial(torch.optim.Adam, lr=2e-3),
            editor=GradientEditor(lr=args.editor_lr, method="sgd", max_steps=10, learn_lr=args.learn_lr and coef > 0),
            editable_parameters=LAST, edit_coef=coef, locality_coef=coef, val_edits=0,
        )
        trainer = L.Trainer(max_epochs=args.epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, gradient_clip_val=10, limit_val_batches=0)
        t0 = time.perf_counter()
        trainer.fit(module, dm)
        if coef > 0:
            editable_editor = module.editor
        trained[name] = (module.model.eval(), (time.perf_counter() - t0) / args.epochs)
    # Both models are edited by the same editor: the one editable training learned (its lr).
    editor = editable_editor
    print(f"editor lr after editable training: {float(editor.lr):.4f}")
    for name, (model, epoch_time) in trained.items():
        m = evaluate_edits(model, editor, edit_x, edit_y, test, LAST)
        latencies = []
        for i in range(min(50, args.edits)):
            t0 = time.perf_counter()
            editor.edit(model, edit_x[i : i + 1], edit_y[i : i + 1], LAST)
            latencies.append(time.perf_counter() - t0)
        rows[name] = (m, epoch_time, statistics.median(latencies))
        print(f"{name}: {m}", flush=True)

    rows = {k: rows[k] for k in ("normal", "editable")}
    print(f"\n{'training':<9} {'test err':>8} {'success':>8} {'steps':>6} {'drawdown':>9} {'edit ms':>8} {'s/epoch':>8}")
    for name, (m, t, lat) in rows.items():
        print(f"{name:<9} {100 * m.base_error:>7.2f}% {m.success_rate:>8.3f} {m.mean_steps:>6.2f} "
              f"{100 * m.drawdown:>8.2f}pt {1000 * lat:>8.1f} {t:>8.1f}")
    n, e = rows["normal"], rows["editable"]
    print(f"drawdown ratio normal/editable: {n[0].drawdown / max(e[0].drawdown, 1e-9):.2f}; "
          f"training time per epoch editable/normal: {e[1] / n[1]:.2f}")


if __name__ == "__main__":
    main()
