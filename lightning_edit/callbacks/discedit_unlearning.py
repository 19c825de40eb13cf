"""DISCEDIT-U as a Trainer callback: make the model forget classes by masking their most discriminative components.

Murti & Bhattacharyya, "DISCEDIT", NeurIPS 2024 (Sec. 4, DISCEDIT-U; Table 1 reports FA/RA with and
without one epoch of fine-tuning).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_edit.callbacks._common import (
    EpochSpec,
    InputsTargets,
    check_edit_epoch,
    check_epoch_in_run,
    check_start_edit_ran,
    default_inputs_targets,
    device_batches,
    evaluate_accuracy,
    forget_checkpoint_scores_before_edit,
    is_fast_dev_run,
    is_last_train_batch,
    log_metrics,
    output_dir,
    probe_classifier,
    say_fast_dev_run,
    stage_loader,
)
from lightning_edit.discedit.recalibrate import recalibrate_batchnorm
from lightning_edit.discedit.scores import check_discedit_options, check_random_seed, get_witness
from lightning_edit.discedit.structured import build_dependency_graph, enable_edit_reload
from lightning_edit.discedit.unlearn import (
    DEFAULT_FORGET_TARGET,
    RECALIBRATION_BATCHES,
    check_forget_classes,
    check_refit_steps,
    coupled_writers,
    default_unlearning_layers,
    expand_coupled,
    forget_retain_accuracy,
    maskable_layers,
    mask_components,
    mask_until_forgotten,
    refit_forget_rows,
    refit_skipped_message,
    resolve_masking,
    select_components,
    tie_coupled_scores,
    unlearning_component_scores,
)


class DiscEditUnlearning(Callback):
    """Forget ``forget_classes`` at an epoch boundary (or at the end of fit), optionally fine-tuning on the rest.

    At the unlearning point: collect class-conditional moments over ``calibration_batches`` (summed across
    DDP ranks), score every component by its TV bound between each forget class and the rest, and mask
    the highest-scored ones (weights, bias and following BatchNorm held at zero by
    ``torch.nn.utils.prune`` masks, so a fine-tune cannot bring them back and checkpoints keep them).
    Then, for ``finetune_epochs`` epochs, every forget-class sample in a training batch is replaced by a
    remaining-class sample of the same batch (no host sync; batch size unchanged), and training stops
    when they are done.

    When: at ``unlearn_epoch`` the masks are applied right after the epoch's last training batch, *before*
    that epoch's validation, so its validation metrics and checkpoints describe the edited model; every
    ``ModelCheckpoint`` that monitors a metric then forgets its best-k ranking (said in the log), so no
    pre-edit score ranks the edited model. ``unlearn_epoch="start"`` edits before the first training batch
    of the fit: a trained model (loaded weights or ``ckpt_path``) forgets the classes, is fine-tuned for
    ``finetune_epochs`` and training stops. ``unlearn_epoch=None`` edits at the end of fit, after the last
    checkpoint: the edited model is in memory only (use ``"start"`` to get it checkpointed).

    Logged (``unlearn/...``): ``ratio`` (fixed or found), ``calibration_forget_acc`` and ``calibration_remaining_acc``
    (``ratio="auto"``),
    ``forget_acc_before``, ``forget_acc_after``, ``retain_acc_before``, ``retain_acc_after``, ``FA`` (drop of
    forget-class accuracy, points of accuracy in [0, 1]), ``RA`` (drop of remaining-class accuracy),
    ``fraction_masked``; after fine-tuning the same with ``_ft``. Accuracies are macro averages of torchmetrics per-class accuracy on the validation loader.
    At the end: a rich table and ``discedit_unlearning.png`` (per-class accuracy before/after).

    Args:
        forget_classes: class indices to forget.
        ratio: ``"auto"``: mask the fewest components (1% grid, at most ``max_ratio``, default 0.5) that bring the
            forget classes' accuracy on the calibration batches to at most ``forget_target`` (default 0.02;
            :func:`~lightning_edit.discedit.mask_until_forgotten`); a number in (0, 1): that fixed fraction, per
            layer (``scope="layer"``) or overall (``"global"``).
        forget_target, max_ratio: of ``ratio="auto"`` (an error with a fixed ratio or ``std_threshold``).
        std_threshold: instead of ``ratio``, mask ``r_j > mean + k·std`` per layer (the authors' rule, k in 1.25..2.5).
        unlearn_epoch: act at the end of this (0-based) training epoch, before its validation; ``"start"``: before
            the first training batch of this fit (needs ``finetune_epochs >= 1``); None: at the end of fit (no
            fine-tuning, no checkpoint of the edited model).
        finetune_epochs: epochs of fine-tuning on the remaining classes after the edit (then training stops).
        witness: witness name (:data:`lightning_edit.discedit.WITNESS_FUNCTIONS`).
        importance: ``"discedit"``, or a baseline masking as many components: ``"l1"``, ``"random"``;
            ``"none"`` masks nothing (the fine-tune-on-the-retain-set-only baseline).
        layers: ``fnmatch`` patterns of layers to edit; ``"auto"`` (default): the last third of the Conv2d/Linear
            layers (:func:`~lightning_edit.discedit.default_unlearning_layers`; the paper edits the last stage / last
            blocks); None: every Conv2d/Linear except the classifier.
        scope: see ``ratio``.
        calibration_batches, calibration_source: which batches give the moments (must contain the forget classes).
        recalibrate_bn: measure each candidate ratio with BatchNorm statistics re-estimated under its mask, and after
            masking reset and re-estimate every BatchNorm's running statistics on ``calibration_batches`` batches of
            the calibration loader (the first ``RECALIBRATION_BATCHES`` = 4 of them, as in the search; all classes;
            averaged across DDP ranks). On by default: without it much of the
            forgetting on a BatchNorm network comes from stale statistics and returns as soon as training updates
            them (:func:`~lightning_edit.discedit.mask_until_forgotten`). False: the paper's procedure. A model
            without BatchNorm: nothing to do.
        coupled: mask a channel in every layer that writes it (a residual stream's writers,
            :func:`~lightning_edit.discedit.coupled_writers`), so it leaves the stream; False: each layer picks its own
            channels (the paper).
        refit_steps: after masking, re-fit the forget classes' classifier rows for this many Adam steps on the
            calibration batches' remaining-class samples, as a network retrained without them has them
            (:func:`~lightning_edit.discedit.unlearn.refit_forget_rows`; gradients averaged across DDP ranks); default
            :data:`~lightning_edit.discedit.unlearn.DEFAULT_REFIT_STEPS`; 0: rows left as trained. Only when the masks
            alone bring the forget classes' calibration accuracy to ``forget_target`` or below (summed across ranks);
            otherwise the rows stay as trained and the log says so (``report["refit_steps"]`` is 0).
        evaluate: measure per-class accuracy on the validation loader before and after.
        inputs_targets: ``batch -> (inputs, class_indices)``.
        plot: save the per-class accuracy plot (it needs the accuracies: none with ``evaluate=False``, which says so).
        seed: seed of the random baseline.
        privacy_metrics: after the edit (and after fine-tuning) also measure and log ``unlearn/mia_efficacy`` (the
            share of the calibration batches' forget-class training samples that a membership-inference attack
            calls non-members; members: their remaining-class samples; non-members: validation samples;
            :func:`~lightning_edit.unlearning.mia_efficacy`), ``unlearn/relearn_steps`` (Adam steps on 32 of those
            forget samples until half of the validation forget samples are right again, at most 100; -1 if never;
            :func:`~lightning_edit.unlearning.relearn_steps`) and their cost ``unlearn/privacy_seconds``. Each rank
            measures its own shard. Needs a validation loader with remaining- and forget-class samples.

    Raises:
        ValueError: at construction for an empty class list, a ratio neither ``"auto"`` nor in (0, 1),
            ``forget_target``/``max_ratio`` with a fixed ratio or ``std_threshold``, a fixed ratio or
            ``scope="global"`` with ``std_threshold``, a ``seed`` other than 0 with an importance other than
            ``"random"``, a negative ``refit_steps`` or one with ``importance="none"``, fine-tuning without an
            ``unlearn_epoch``, ``"start"`` without fine-tuning, an unknown witness or importance, a non-default
            witness with another importance (it would not be read); at setup for
            an unlearning or last fine-tuning epoch at or past ``trainer.max_epochs`` (it would never run; for
            ``"start"`` checked when training starts, after a checkpoint is restored), classes outside the
            model's outputs or covering all of them, an explicit ``refit_steps > 0`` on a model whose last layer is
            not a Linear seeing one input per sample (at the default the re-fit is skipped there), ``privacy_metrics`` without a validation loader or with
            ``evaluate=False``, an empty calibration loader, calibration targets that are
            not class indices, or tuple batches when fine-tuning (they cannot be edited in place: use lists or
            dicts); at the edit, before the model changes, for a forget class absent from the calibration
            batches or non-finite (NaN/inf) calibration statistics or scores (naming the first such layer).

    Example::

        trainer = L.Trainer(max_epochs=6, callbacks=[DiscEditUnlearning([3], ratio=0.1, unlearn_epoch=4,
                                                                        finetune_epochs=1)])
    """

    def __init__(
        self,
        forget_classes: list[int],
        ratio: float | Literal["auto"] = "auto",
        std_threshold: float | None = None,
        unlearn_epoch: EpochSpec = None,
        finetune_epochs: int = 0,
        witness: str = "fisher",
        importance: Literal["discedit", "l1", "random", "none"] = "discedit",
        layers: list[str] | Literal["auto"] | None = "auto",
        scope: Literal["layer", "global"] = "layer",
        calibration_batches: int | None = 16,
        calibration_source: Literal["train", "val"] = "train",
        recalibrate_bn: bool = True,
        coupled: bool = True,
        evaluate: bool = True,
        inputs_targets: InputsTargets | None = None,
        plot: bool = True,
        seed: int = 0,
        forget_target: float | None = None,
        max_ratio: float | None = None,
        privacy_metrics: bool = False,
        refit_steps: int | None = None,
    ) -> None:
        if not forget_classes:
            raise ValueError("forget_classes is empty; name at least one class index to forget.")
        self.fixed_ratio, self.forget_target, self.max_ratio = resolve_masking(ratio, std_threshold, forget_target, max_ratio,
                                                                               scope)
        check_edit_epoch(unlearn_epoch, "unlearn_epoch", allow_none=True)
        if finetune_epochs < 0 or (finetune_epochs > 0 and unlearn_epoch is None):
            raise ValueError("finetune_epochs > 0 needs an unlearn_epoch (fine-tuning happens in the following epochs).")
        if unlearn_epoch == "start" and finetune_epochs < 1:
            raise ValueError(
                "unlearn_epoch='start' needs finetune_epochs >= 1 (the edit is checkpointed by the fine-tuning epochs); "
                "to edit without fine-tuning use lightning_edit.discedit.unlearn() on the trained model."
            )
        if importance not in ("discedit", "l1", "random", "none"):
            raise ValueError(f"importance must be 'discedit', 'l1', 'random' or 'none', got {importance!r}.")
        if scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}.")
        get_witness(witness)
        check_discedit_options(importance, witness=(witness, "fisher"))
        check_random_seed(importance, seed)
        steps = check_refit_steps(refit_steps)
        if refit_steps and importance == "none":
            raise ValueError("refit_steps re-fits the rows after masking, but importance='none' masks nothing; "
                             "drop refit_steps or choose a masking importance.")
        self.refit_steps = refit_steps
        self._refit = 0 if importance == "none" else steps
        self.forget_classes = sorted(set(int(c) for c in forget_classes))
        self.ratio, self.std_threshold, self.scope = ratio, std_threshold, scope
        self.unlearn_epoch, self.finetune_epochs = unlearn_epoch, finetune_epochs
        self._run_epoch, self._run_finetune = unlearn_epoch, finetune_epochs  # what this fit does (fast_dev_run)
        self.witness, self.importance, self.layer_patterns = witness, importance, layers
        self.calibration_batches, self.calibration_source = calibration_batches, calibration_source
        self.evaluate, self.plot, self.seed = evaluate, plot, seed
        self.recalibrate_bn, self.coupled = recalibrate_bn, coupled
        self.privacy_metrics = privacy_metrics
        self._privacy_data: tuple | None = None
        self._inputs_targets = inputs_targets or default_inputs_targets
        self.num_classes: int | None = None
        self.input_shape: list[int] | None = None
        self.report: dict[str, Any] = {}
        self.done_epoch: int | None = None
        self._forget: Tensor | None = None

    def _layer_patterns(self, pl_module: L.LightningModule) -> list[str] | None:
        return default_unlearning_layers(pl_module) if self.layer_patterns == "auto" else self.layer_patterns

    @property
    def state_key(self) -> str:
        return self._generate_state_key(forget_classes=tuple(self.forget_classes), ratio=self.ratio)

    def get_inputs_targets(self, batch: Any) -> tuple[Tensor, Tensor]:
        """``batch -> (inputs, class_indices)``; override in a subclass for other batch structures."""
        return self._inputs_targets(batch)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        enable_edit_reload(pl_module)
        if stage != "fit":
            return
        self._run_epoch, self._run_finetune = self.unlearn_epoch, self.finetune_epochs
        if is_fast_dev_run(trainer) and self.unlearn_epoch is not None:
            self._run_epoch = "start" if self.unlearn_epoch == "start" else 0
            self._run_finetune = min(self.finetune_epochs, 1) if self.unlearn_epoch == "start" else 0
            say_fast_dev_run(
                f"DiscEditUnlearning(unlearn_epoch={self.unlearn_epoch!r}, finetune_epochs={self.finetune_epochs})",
                "those epochs", "before epoch 0 with epoch 0 as fine-tuning" if self._run_epoch == "start"
                else "at the end of epoch 0's training, without fine-tuning")
        elif isinstance(self.unlearn_epoch, int):
            check_epoch_in_run(
                trainer, self.unlearn_epoch + self.finetune_epochs,
                f"DiscEditUnlearning(unlearn_epoch={self.unlearn_epoch}, finetune_epochs={self.finetune_epochs})",
            )
        maskable_layers(pl_module, self._layer_patterns(pl_module))
        self.num_classes, self.input_shape = probe_classifier(
            trainer, pl_module, self.calibration_source, self.get_inputs_targets, "DiscEditUnlearning"
        )
        example = torch.zeros(self.input_shape, device=pl_module.device, dtype=next(pl_module.parameters()).dtype)
        self._refit = 0 if self.importance == "none" else check_refit_steps(self.refit_steps, pl_module, example)
        check_forget_classes(self.forget_classes, self.num_classes)
        if self.privacy_metrics and (not self.evaluate or stage_loader(trainer, "val") is None):
            raise ValueError("DiscEditUnlearning(privacy_metrics=True) needs a validation loader (its samples are the "
                             "attack's non-members and the held-out forget samples of the relearn test) and "
                             "evaluate=True; add a val_dataloader or set privacy_metrics=False.")
        if self.finetune_epochs:
            batch = next(iter(stage_loader(trainer, "train")))
            if isinstance(batch, tuple):
                raise ValueError(
                    "Fine-tuning on the remaining classes edits training batches in place, but they are tuples; "
                    "return lists or dicts from your collate_fn (the default collate returns lists)."
                )

    # ------------------------------------------------------------------ the edit
    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._run_epoch == "start" and self.done_epoch is None:
            check_epoch_in_run(
                trainer, trainer.current_epoch + self._run_finetune - 1,
                f"DiscEditUnlearning(unlearn_epoch='start', finetune_epochs={self.finetune_epochs}) from epoch "
                f"{trainer.current_epoch}",
            )
            self.forget(trainer, pl_module, in_loop=False)
            self.done_epoch = trainer.current_epoch - 1  # fine-tuning is this epoch and the next ones

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if is_last_train_batch(trainer):
            self._forget_if_due(trainer, pl_module)

    def _forget_if_due(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.done_epoch is None and trainer.current_epoch == self._run_epoch:
            self.forget(trainer, pl_module, in_loop=True)
            if self._run_finetune == 0:
                trainer.should_stop = True

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.done_epoch is None:
            self._forget_if_due(trainer, pl_module)  # only if no last batch was seen (e.g. an iterable of unknown length)
        elif self._run_finetune and epoch == self.done_epoch + self._run_finetune:
            self._measure(trainer, pl_module, "_ft", in_loop=True)
            trainer.should_stop = True

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.unlearn_epoch == "start":
            check_start_edit_ran(trainer, self.done_epoch is not None, "DiscEditUnlearning(unlearn_epoch='start')")
        if self.unlearn_epoch is None and self.done_epoch is None:
            self.forget(trainer, pl_module, in_loop=False)
        if self.report:
            self._report(trainer)

    def forget(self, trainer: L.Trainer, pl_module: L.LightningModule, in_loop: bool) -> dict[str, Any]:
        """Score and mask now; returns the report (also kept in ``self.report``)."""
        device = pl_module.device
        before = self._per_class(trainer, pl_module)
        layers = maskable_layers(pl_module, self._layer_patterns(pl_module))
        masked = total = refit = 0
        picked: dict[str, Tensor] = {}
        search: dict[str, Any] = {}
        if self.importance != "none":
            batches = list(device_batches(
                stage_loader(trainer, self.calibration_source), self.get_inputs_targets, device, self.calibration_batches
            ))
            reduce_sum = lambda t: trainer.strategy.reduce(t, reduce_op="sum")  # noqa: E731
            reduce_mean = lambda t: trainer.strategy.reduce(t, reduce_op="mean")  # noqa: E731
            example = torch.zeros(self.input_shape, device=device, dtype=next(pl_module.parameters()).dtype)
            dg = build_dependency_graph(pl_module, example)  # traced once: coupling, search sites and masks
            writers = coupled_writers(pl_module, layers, example, dg) if self.coupled else {}
            if self.coupled:
                layers = expand_coupled(pl_module, layers, writers)
            scores = unlearning_component_scores(
                pl_module, layers, self.forget_classes, self.importance, batches, self.num_classes, self.witness,
                reduce_sum=reduce_sum, generator=torch.Generator().manual_seed(self.seed),
            )
            if self.coupled:
                scores = tie_coupled_scores(scores, writers)
            head_inputs: list[tuple[Tensor, Tensor]] | None = None
            if self.forget_target is not None:
                head_inputs = [] if self._refit else None  # the edited model's classifier inputs, recorded by the search
                picked, ratio, calib_acc, calib_remaining = mask_until_forgotten(
                    pl_module, layers, scores, batches, self.forget_classes, example, self.forget_target,
                    self.max_ratio, self.scope, reduce_sum, recalibrate=self.recalibrate_bn, reduce_mean=reduce_mean,
                    dg=dg, head_inputs=head_inputs)
                search = {"ratio": ratio, "calibration_forget_acc": calib_acc, "calibration_remaining_acc": calib_remaining}
                if calib_acc > self.forget_target:
                    rank_zero_warn(f"DiscEditUnlearning: masking max_ratio={self.max_ratio} of the components leaves the "
                                   f"forget classes at accuracy {calib_acc:.3f} on the calibration data, above "
                                   f"forget_target={self.forget_target}; raise max_ratio or edit more layers.")
                else:
                    rank_zero_info(f"DiscEditUnlearning: ratio {ratio:.2f} brings the calibration forget accuracy to "
                                   f"{calib_acc:.3f} (target {self.forget_target}).")
            else:
                picked = select_components(scores, self.fixed_ratio, self.scope, self.std_threshold)
                search = {"ratio": self.fixed_ratio}
            if self.privacy_metrics:
                with torch.random.fork_rng(devices=[]):  # measuring must not change the training that follows
                    self._privacy_data = self._collect_privacy_data(trainer, batches)
            masked = mask_components(pl_module, layers, picked, example, dg)
            if self.recalibrate_bn:
                recalibrate_batchnorm(pl_module, batches, RECALIBRATION_BATCHES, reduce_mean=reduce_mean)
            refit = self._refit
            ceiling = self.forget_target if self.forget_target is not None else DEFAULT_FORGET_TARGET
            if refit and not refit_forget_rows(pl_module, batches, self.forget_classes, refit, reduce_mean=reduce_mean,
                                               head_inputs=head_inputs, max_forget_accuracy=ceiling,
                                               reduce_sum=reduce_sum):
                (rank_zero_warn if self.refit_steps is not None else rank_zero_info)(
                    "DiscEditUnlearning: " + refit_skipped_message(self.forget_classes, ceiling))
                refit = 0
        total = sum(math.prod(getattr(m, "weight_orig", m.weight).shape) for m in layers.values())
        self.done_epoch = trainer.current_epoch
        self._forget = torch.tensor(self.forget_classes, device=device)
        self.report = {
            "epoch": trainer.current_epoch,
            "masked": {n: i.tolist() for n, i in picked.items()},
            "fraction_masked": masked / max(1, total),
            "refit_steps": refit,
            **search,
            "per_class_before": before.tolist() if before is not None else None,
        }
        # torch.nn.utils.prune re-registers each masked Parameter as `<name>_orig` (the same tensor object), so
        # the optimizers keep training it and need no rebuild; the mask holds the masked entries at zero.
        if self.importance != "none" and self.unlearn_epoch is not None:
            forget_checkpoint_scores_before_edit(trainer, "DiscEditUnlearning")
        self._measure(trainer, pl_module, "", in_loop)
        return self.report

    def _per_class(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Tensor | None:
        loader = stage_loader(trainer, "val") if self.evaluate else None
        if loader is None:
            return None
        return evaluate_accuracy(pl_module, loader, self.get_inputs_targets, self.num_classes, pl_module.device,
                                 average=None).cpu()

    def _measure(self, trainer: L.Trainer, pl_module: L.LightningModule, suffix: str, in_loop: bool) -> None:
        after = self._per_class(trainer, pl_module)
        metrics = {"unlearn/fraction_masked": float(self.report["fraction_masked"])}
        if self.report.get("ratio") is not None:
            metrics["unlearn/ratio"] = float(self.report["ratio"])
        for key in ("calibration_forget_acc", "calibration_remaining_acc"):
            if self.report.get(key) is not None:
                metrics[f"unlearn/{key}"] = float(self.report[key])
        self.report[f"per_class_after{suffix}"] = after.tolist() if after is not None else None
        if after is not None and self.report["per_class_before"] is not None:
            f0, r0 = forget_retain_accuracy(torch.tensor(self.report["per_class_before"]), self.forget_classes)
            f1, r1 = forget_retain_accuracy(after, self.forget_classes)
            values = {"forget_acc_before": f0, "retain_acc_before": r0, f"forget_acc_after{suffix}": f1,
                      f"retain_acc_after{suffix}": r1, f"FA{suffix}": f0 - f1, f"RA{suffix}": r0 - r1}
            self.report.update(values)
            metrics.update({f"unlearn/{k}": v for k, v in values.items()})
            rank_zero_info(
                f"DISCEDIT-U{' after fine-tuning' if suffix else ''}: forget acc {f0:.4f} -> {f1:.4f} (FA {f0 - f1:.4f}), "
                f"remaining acc {r0:.4f} -> {r1:.4f} (RA {r0 - r1:.4f}), weights masked {self.report['fraction_masked']:.1%}"
            )
        if self._privacy_data is not None:
            with torch.random.fork_rng(devices=[]):  # the validation loader's iterator draws from the global RNG
                metrics.update(self._privacy(pl_module, suffix))
        log_metrics(trainer, pl_module, metrics, in_loop)

    def _collect_privacy_data(self, trainer: L.Trainer, batches: list[tuple[Tensor, Tensor]]) -> tuple:
        from lightning_edit.unlearning import subsample

        x = torch.cat([b[0] for b in batches]).cpu()
        y = torch.cat([b[1] for b in batches]).cpu()
        val = list(device_batches(stage_loader(trainer, "val"), self.get_inputs_targets, torch.device("cpu"), None))
        xv, yv = torch.cat([b[0] for b in val]), torch.cat([b[1] for b in val])
        gen = torch.Generator().manual_seed(self.seed)
        return (subsample((x, y), self.forget_classes, exclude=True), subsample((xv, yv), self.forget_classes, exclude=True),
                subsample((x, y), self.forget_classes), subsample((x, y), self.forget_classes, 32, generator=gen),
                subsample((xv, yv), self.forget_classes))

    def _privacy(self, pl_module: L.LightningModule, suffix: str) -> dict[str, float]:
        import time

        from lightning_edit.unlearning import mia_efficacy, relearn_steps

        t0 = time.perf_counter()
        members, non_members, forgotten, relearn_from, forget_val = self._privacy_data
        mia = mia_efficacy(pl_module, members, non_members, forgotten, seed=self.seed)
        steps = relearn_steps(pl_module, relearn_from, forget_val, self.forget_classes, max_steps=100)
        values = {f"mia_efficacy{suffix}": mia, f"relearn_steps{suffix}": float(-1 if steps is None else steps),
                  f"privacy_seconds{suffix}": time.perf_counter() - t0}
        self.report.update(values)
        return {f"unlearn/{k}": v for k, v in values.items()}

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.done_epoch is None or self._forget is None:
            return
        x, y = self.get_inputs_targets(batch)
        forget = torch.isin(y, self._forget.to(y.device))
        order = torch.argsort(forget.to(torch.uint8), stable=True)  # remaining-class samples first
        remaining = (~forget).sum().clamp_min(1)
        take = torch.where(forget, order[torch.arange(len(y), device=y.device) % remaining], torch.arange(len(y), device=y.device))
        _replace_in_place(batch, x, x[take])
        _replace_in_place(batch, y, y[take])

    # ------------------------------------------------------------------ checkpoints and report
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"report": self.report, "done_epoch": self.done_epoch}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.report = dict(state_dict.get("report", {}))
        self.done_epoch = state_dict.get("done_epoch")
        if self.done_epoch is not None:
            self._forget = torch.tensor(self.forget_classes)

    @rank_zero_only
    def _report(self, trainer: L.Trainer) -> None:
        from rich.console import Console
        from rich.table import Table

        r = self.report
        if "forget_acc_before" not in r:  # evaluate=False: no accuracies to tabulate
            rank_zero_info(f"DISCEDIT-U: forgetting classes {self.forget_classes} "
                           f"({r['fraction_masked']:.1%} of weights masked; evaluate=False, accuracies not measured"
                           f"{' and no per-class plot' if self.plot else ''})")
            return
        table = Table(title=f"DISCEDIT-U: forgetting classes {self.forget_classes} ({r['fraction_masked']:.1%} of weights masked)")
        for col in ("", "forget acc", "remaining acc", "FA", "RA"):
            table.add_column(col, justify="right")
        if "forget_acc_before" in r:
            table.add_row("before", f"{r['forget_acc_before']:.4f}", f"{r['retain_acc_before']:.4f}", "", "")
            table.add_row("after edit", f"{r['forget_acc_after']:.4f}", f"{r['retain_acc_after']:.4f}", f"{r['FA']:.4f}", f"{r['RA']:.4f}")
            if "FA_ft" in r:
                table.add_row("after fine-tune", f"{r['forget_acc_after_ft']:.4f}", f"{r['retain_acc_after_ft']:.4f}",
                              f"{r['FA_ft']:.4f}", f"{r['RA_ft']:.4f}")
        Console().print(table)
        if self.plot and r.get("per_class_before") is not None:
            self._plot(trainer)

    def _plot(self, trainer: L.Trainer) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        r = self.report
        series = [("before", r["per_class_before"]), ("after edit", r["per_class_after"])]
        if r.get("per_class_after_ft") is not None:
            series.append(("after fine-tune", r["per_class_after_ft"]))
        k = len(r["per_class_before"])
        width = 0.8 / len(series)
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for i, (label, values) in enumerate(series):
            ax.bar([c + (i - (len(series) - 1) / 2) * width for c in range(k)], values, width, label=label)
        for c in self.forget_classes:
            ax.axvspan(c - 0.45, c + 0.45, color="red", alpha=0.08)
        ax.set_xticks(range(k))
        ax.set_xlabel("class (forgotten ones shaded)")
        ax.set_ylabel("validation accuracy")
        ax.set_title("DISCEDIT-U: per-class accuracy")
        ax.set_ylim(0, 1.2)
        ax.legend(fontsize=8, loc="upper center", ncol=len(series))
        fig.tight_layout()
        path = output_dir(trainer) / "discedit_unlearning.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        rank_zero_info(f"DISCEDIT-U plot saved to {path}")


def _replace_in_place(batch: Any, old: Tensor, new: Tensor) -> None:
    """Swap the tensor ``old`` for ``new`` inside a list or dict batch."""
    items = batch.items() if isinstance(batch, dict) else enumerate(batch)
    for key, value in list(items):
        if value is old:
            batch[key] = new
            return
