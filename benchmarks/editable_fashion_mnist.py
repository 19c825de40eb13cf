"""Benchmark: Editable Training vs normal training on Fashion-MNIST (Sinitsin et al., ICLR 2020).

For each architecture (SmallCNN, ResNet-20 option B) and seed, two models are trained with the same module,
epochs, outer optimiser (Adam, lr 1e-3, gradient-norm clip 10) and data: a *normal* one (c_edit = c_loc = 0)
and an *edit-trained* one (the authors' protocol, c_edit = c_loc = 0.01, RMSProp editor with learned β on one
inner block; ``--coef``, ``--edits-per-step`` and ``--pretrain-epochs`` for ablations). Both are then edited by
the same editor (the edit-trained run's RMSProp editor, k = 10 steps, same block), and the normal model also by
the baseline a user would try: Adam (lr 1e-3) fine-tuning of the same block until the edit holds (at most 100
steps, no locality term).

Edits follow the authors' ``evaluate_quality``: each of ``--edits`` test images (disjoint from the drawdown
images) gets a uniformly random label and is applied separately to the original model; drawdown is the edited
model's error on ``--drawdown-images`` test images minus the base error. Training time per epoch is measured
side by side in the same run. Writes ``results.json`` and ``table.md`` to ``--out``.

    python benchmarks/editable_fashion_mnist.py [--archs smallcnn resnet20] [--seeds 3] [--epochs 3]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import statistics
import time
from pathlib import Path

import lightning as L
import torch
from _common import RESULTS, datamodule, set_threads

from lightning_edit import EditableModule
from lightning_edit.edit import FineTuneEditor
from lightning_edit.editable import GradientEditor, evaluate_edits
from lightning_edit.models import SmallCNN, resnet20

ARMS = ("normal + RMSProp editor", "edit-trained + RMSProp editor", "normal + Adam fine-tune")


def build(arch: str) -> torch.nn.Module:
    return SmallCNN(1, 10) if arch == "smallcnn" else resnet20(in_channels=1, num_classes=10)


class EditorTrace(L.Callback):
    """The editor's learned lr and β at the end of every training epoch (instrumentation)."""

    def __init__(self) -> None:
        self.lr: list[float] = []
        self.beta: list[float] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: EditableModule) -> None:
        self.lr.append(float(pl_module.editor.lr))
        self.beta.append(float(pl_module.editor.beta))


def train(arch: str, seed: int, coef: float, epochs: int, dm, init: dict | None = None,
          **kwargs) -> tuple[EditableModule, float, EditorTrace]:
    """Train ``arch`` (from the weights ``init`` where given) for ``epochs`` with c_edit = c_loc = ``coef``."""
    L.seed_everything(seed, verbose=False)
    model = build(arch)
    if init is not None:
        model.load_state_dict(init)
    module = EditableModule(model, edit_coef=coef, locality_coef=coef, val_edits=0, **kwargs)
    trace = EditorTrace()
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[trace])
    t0 = time.perf_counter()
    trainer.fit(module, dm)
    return module, (time.perf_counter() - t0) / epochs, trace


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="+", default=["smallcnn", "resnet20"], choices=["smallcnn", "resnet20"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-subset", type=int, default=20000)
    ap.add_argument("--edits", type=int, default=100, help="edits per seed and arm")
    ap.add_argument("--drawdown-images", type=int, default=2000)
    ap.add_argument("--finetune-steps", type=int, default=100)
    ap.add_argument("--locality-reference", choices=["train", "eval"], default="train")
    ap.add_argument("--fixed-editor-lr", action="store_true", help="keep the editor lr at 1e-3 (the authors' CIFAR value)")
    ap.add_argument("--coef", type=float, default=0.01, help="c_edit = c_loc of the edit-trained model (authors: 0.01)")
    ap.add_argument("--edits-per-step", type=int, default=1, help="edits per training step (the module's default 1)")
    ap.add_argument("--pretrain-epochs", type=int, default=0,
                    help="train normally this many epochs first; both arms then continue from those weights for "
                         "--epochs (editable fine-tuning, the authors' ImageNet protocol)")
    ap.add_argument("--editable-parameters", nargs="+", default=None, metavar="PATTERN",
                    help="fnmatch patterns of the edited block (default: the module's 'auto' inner block; 'all': every "
                         "parameter)")
    ap.add_argument("--skip-finetune", action="store_true", help="leave out the Adam fine-tune arm (ablations)")
    ap.add_argument("--out", default=str(RESULTS / "editable_fashion_mnist"))
    args = ap.parse_args()
    set_threads()
    dm, _ = datamodule(batch_size=128, train_subset=args.train_subset)
    dm.setup("fit")
    dm.setup("test")
    xs, ys = dm.test_set.x, dm.test_set.y
    if args.drawdown_images + args.edits > len(xs):
        raise SystemExit(f"--drawdown-images + --edits must be at most {len(xs)} test images.")
    test = list(zip(xs[: args.drawdown_images].split(500), ys[: args.drawdown_images].split(500)))
    edit_x = xs[-args.edits :]
    results: dict = {"settings": vars(args), "runs": []}
    block_arg = "auto" if args.editable_parameters is None else (
        None if args.editable_parameters == ["all"] else args.editable_parameters)
    for arch in args.archs:
        for seed in range(args.seeds):
            init = None
            if args.pretrain_epochs:
                init = train(arch, seed, 0.0, args.pretrain_epochs, dm)[0].model.state_dict()
            normal, t_normal, _ = train(arch, seed, 0.0, args.epochs, dm, init)
            editable, t_editable, trace = train(arch, seed, args.coef, args.epochs, dm, init,
                                                locality_reference=args.locality_reference,
                                                edits_per_step=args.edits_per_step, editable_parameters=block_arg,
                                                editor=GradientEditor(learn_lr=not args.fixed_editor_lr))
            block = editable.editable_parameters or ["*"]
            editor = editable.editor  # the edit-trained editor (learned β), used for both models
            layers = [name for name, m in editable.model.named_modules()  # the block's layers with weights
                      if getattr(m, "weight", None) is not None and any(fnmatch.fnmatchcase(f"{name}.weight", p) for p in block)]
            finetune = FineTuneEditor(layers=layers, lr=1e-3, max_steps=args.finetune_steps, locality_coef=0.0)
            edit_y = torch.randint(0, 10, (args.edits,), generator=torch.Generator().manual_seed(seed))
            run = {"arch": arch, "seed": seed, "editable_parameters": block, "editor_beta": float(editor.beta),
                   "editor_lr": float(editor.lr), "s_per_epoch_normal": t_normal, "s_per_epoch_editable": t_editable,
                   "editor_lr_per_epoch": trace.lr, "editor_beta_per_epoch": trace.beta}
            arms = ARMS[:2] if args.skip_finetune else ARMS
            for arm, model, ed in zip(arms, (normal.model, editable.model, normal.model), (editor, editor, finetune)):
                with torch.enable_grad():
                    m = evaluate_edits(model.eval(), ed, edit_x, edit_y, test, block if ed is editor else None, progress=True)
                run[arm] = {"test_error": m.base_error, "success_rate": m.success_rate, "mean_steps": m.mean_steps,
                            "drawdown": m.drawdown, "drawdown_p90": m.drawdown_p90, "median_latency_s": m.median_latency_s}
                print(f"{arch} seed {seed} {arm}: err {100 * m.base_error:.2f}% success {m.success_rate:.3f} "
                      f"steps {m.mean_steps:.2f} drawdown {100 * m.drawdown:.2f} pt (p90 {100 * m.drawdown_p90:.2f}) "
                      f"latency {1000 * m.median_latency_s:.1f} ms", flush=True)
            print(f"{arch} seed {seed}: s/epoch normal {t_normal:.1f}, editable {t_editable:.1f} "
                  f"(x{t_editable / t_normal:.2f}); learned lr per epoch {[f'{v:.2e}' for v in trace.lr]}, "
                  f"beta {[round(v, 3) for v in trace.beta]}; block {block}", flush=True)
            results["runs"].append(run)
            write(results, Path(args.out))  # after every run, so an interrupted benchmark keeps what it measured


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lines = ["| model | arm | test error (%) | edit success | mean steps | drawdown (pt) | drawdown p90 (pt) "
             "| median edit latency (ms) |", "|---|---|---|---|---|---|---|---|"]
    summary: dict = {}
    for arch in dict.fromkeys(r["arch"] for r in results["runs"]):
        runs = [r for r in results["runs"] if r["arch"] == arch]
        summary[arch] = {}
        for arm in [a for a in ARMS if a in runs[0]]:
            cell = {k: mean_std([r[arm][k] for r in runs]) for k in runs[0][arm]}
            summary[arch][arm] = cell
            lines.append(
                f"| {arch} | {arm} | {100 * cell['test_error'][0]:.2f} ± {100 * cell['test_error'][1]:.2f} "
                f"| {cell['success_rate'][0]:.3f} ± {cell['success_rate'][1]:.3f} | {cell['mean_steps'][0]:.2f} "
                f"| {100 * cell['drawdown'][0]:.2f} ± {100 * cell['drawdown'][1]:.2f} | {100 * cell['drawdown_p90'][0]:.2f} "
                f"| {1000 * cell['median_latency_s'][0]:.1f} |")
        ratio = mean_std([r["s_per_epoch_editable"] / r["s_per_epoch_normal"] for r in runs])
        dd = mean_std([r[ARMS[1]]["drawdown"] / max(r[ARMS[0]]["drawdown"], 1e-9) for r in runs])
        summary[arch]["time_per_epoch_ratio"] = ratio
        summary[arch]["drawdown_ratio_edit_trained_over_normal"] = dd
        lines.append(f"| {arch} | training time per epoch, edit-trained / normal | x{ratio[0]:.2f} ± {ratio[1]:.2f} "
                     f"| drawdown edit-trained / normal: {dd[0]:.2f} ± {dd[1]:.2f} | | | | |")
    results["summary"] = summary
    (out / "results.json").write_text(json.dumps(results, indent=1))
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
