"""Helpers shared by the editing callbacks: batches, loaders, evaluation, output files."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

InputsTargets = Callable[[Any], tuple[Tensor, Tensor]]


def default_inputs_targets(batch: Any) -> tuple[Tensor, Tensor]:
    """``(x, y, ...)`` batches -> ``(x, y)``; dict batches with keys ``"x"``/``"input"`` and ``"y"``/``"target"``."""
    if isinstance(batch, dict):
        x = batch.get("x", batch.get("input"))
        y = batch.get("y", batch.get("target"))
        if x is not None and y is not None:
            return x, y
    elif isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError(
        f"Cannot find (inputs, targets) in a batch of type {type(batch).__name__}. Pass `inputs_targets=` "
        "a function batch -> (inputs, class_indices), or override `get_inputs_targets` in a subclass."
    )


def first_loader(loaders: Any) -> Any:
    """The first DataLoader of what Lightning holds (a loader, a list/tuple, or a dict of them)."""
    if isinstance(loaders, dict):
        return next(iter(loaders.values()), None)
    if isinstance(loaders, (list, tuple)):
        return loaders[0] if loaders else None
    return loaders


def stage_loader(trainer: L.Trainer, source: str) -> Any:
    """The train or val loader of the running fit (with distributed samplers injected), else the data source's."""
    live = trainer.train_dataloader if source == "train" else trainer.val_dataloaders
    if live is not None:
        return first_loader(live)
    # Before the loops have set up their data: ask the datamodule / module / fit() argument directly.
    data_source = trainer.fit_loop._data_source if source == "train" else trainer.fit_loop.epoch_loop.val_loop._data_source
    return first_loader(data_source.dataloader()) if data_source.is_defined() else None


def device_batches(
    loader: Any, get_xy: InputsTargets, device: torch.device, limit: int | None
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield up to ``limit`` ``(x, y)`` pairs from ``loader`` moved to ``device``."""
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            break
        x, y = get_xy(batch)
        yield move_data_to_device(x, device), move_data_to_device(y, device)


@torch.no_grad()
def evaluate_accuracy(
    model: torch.nn.Module, loader: Any, get_xy: InputsTargets, num_classes: int, device: torch.device,
    limit: int | None = None, average: str | None = "micro",
) -> Tensor:
    """Top-1 accuracy of ``model`` (eval mode, restored after) with torchmetrics; synced across DDP ranks.

    Returns:
        a 0-d tensor (``average="micro"``) or ``(num_classes,)`` (``average=None``), in [0, 1].
    """
    metric = MulticlassAccuracy(num_classes, average=average).to(device)
    was_training = model.training
    model.eval()
    try:
        for x, y in device_batches(loader, get_xy, device, limit):
            metric.update(model(x), y)
    finally:
        model.train(was_training)
    return metric.compute()


def output_dir(trainer: L.Trainer) -> Path:
    """Where plots go: the logger's directory, else the trainer's root directory."""
    d = Path(trainer.log_dir or trainer.default_root_dir)
    d.mkdir(parents=True, exist_ok=True)
    return d


def probe_classifier(trainer: L.Trainer, pl_module: L.LightningModule, source: str, get_xy: InputsTargets, who: str):
    """Check one batch of the ``source`` loader at setup: targets are class indices within the model's outputs.

    Returns:
        ``(num_classes, input_shape)`` with ``input_shape = [1, *x.shape[1:]]``.

    Raises:
        ValueError: no such loader or an empty one, targets that are not 1-D integer class indices, outputs that
            are not ``(N, K)`` logits, or targets outside ``[0, K)``.
    """
    from lightning_edit.discedit.moments import check_targets

    loader = stage_loader(trainer, source)
    if loader is None:
        raise ValueError(f"{who} needs a {source} dataloader for calibration; none is defined.")
    first = next(iter(loader), None)
    if first is None:
        raise ValueError(
            f"{who}: the {source} dataloader yields no batch, so there is nothing to calibrate on; give it data "
            f"or choose the other loader with calibration_source={'val' if source == 'train' else 'train'!r}."
        )
    x, y = get_xy(first)
    check_targets(y)
    x = x.to(pl_module.device)
    was_training = pl_module.training
    pl_module.eval()
    with torch.no_grad():
        out = pl_module(x[:2])
    pl_module.train(was_training)
    if not isinstance(out, Tensor) or out.ndim != 2:
        raise ValueError(f"{who} needs a classifier returning (N, K) logits; got {getattr(out, 'shape', type(out))}.")
    num_classes = out.shape[1]
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(
            f"Calibration targets range over [{int(y.min())}, {int(y.max())}] but the model has {num_classes} "
            "outputs; targets must be class indices in [0, K)."
        )
    return num_classes, [1, *x.shape[1:]]


def log_metrics(trainer: L.Trainer, pl_module: L.LightningModule, metrics: dict[str, float], in_loop: bool) -> None:
    """``pl_module.log_dict`` inside the training loop; straight to the loggers (and callback_metrics) outside it."""
    if in_loop:
        pl_module.log_dict(metrics)
        return
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
    trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})


EpochSpec = int | str | None
"""When an editing callback acts: a 0-based epoch (end of that epoch's training, before its validation),
``"start"`` (before the first training batch of this fit, e.g. on a trained or resumed checkpoint), or None."""


def check_edit_epoch(value: EpochSpec, name: str, allow_none: bool = False) -> None:
    """Validate an epoch argument at construction.

    Raises:
        ValueError: a negative epoch, or a value that is neither an int nor ``"start"`` (nor None when allowed).
    """
    if value is None and allow_none:
        return
    if value == "start" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return
    raise ValueError(f"{name} must be an epoch index >= 0 or 'start'{' or None' if allow_none else ''}, got {value!r}.")


def check_epoch_in_run(trainer: L.Trainer, last_epoch: int, what: str) -> None:
    """Raise if epoch ``last_epoch`` (0-based) never runs under ``trainer.max_epochs``.

    A run bounded by steps or time only (``max_epochs`` of -1 or None) is not checked.

    Raises:
        ValueError: naming both numbers, before anything changes.
    """
    max_epochs = trainer.max_epochs
    if max_epochs is None or max_epochs < 0:
        return
    if last_epoch >= max_epochs:
        raise ValueError(
            f"{what} needs epoch {last_epoch} (0-based) to run, but the Trainer stops after epoch {max_epochs - 1} "
            f"(max_epochs={max_epochs}); raise max_epochs to at least {last_epoch + 1} or act earlier."
        )


def is_fast_dev_run(trainer: L.Trainer) -> bool:
    """Whether the Trainer is a ``fast_dev_run`` smoke test (one epoch of a few batches)."""
    return bool(getattr(trainer, "fast_dev_run", False))


def say_fast_dev_run(who: str, scheduled: str, instead: str) -> None:
    """One info line: under ``fast_dev_run`` the edit runs once on the single epoch instead of on its schedule."""
    rank_zero_info(f"{who}: fast_dev_run is on, so the edit scheduled for {scheduled} runs once, {instead}, to "
                   "exercise it; a real run follows the schedule (and checks it against max_epochs).")


def check_start_edit_ran(trainer: L.Trainer, done: bool, what: str) -> None:
    """At the end of fit: raise if an edit asked for at ``"start"`` never ran (a resumed run with no epoch left).

    Raises:
        ValueError: naming the restored epoch and ``max_epochs``; the model was not edited.
    """
    if not done:
        raise ValueError(
            f"{what} never ran: the fit resumed at epoch {trainer.current_epoch} with max_epochs={trainer.max_epochs}, "
            "so no training epoch was left. Raise max_epochs, or load the weights only "
            "(ClassifierModule(weights=...)) so that the fit starts at epoch 0."
        )


def is_last_train_batch(trainer: L.Trainer) -> bool:
    """Whether the batch that just ended is the epoch's last (Lightning's own flag; no host sync)."""
    return bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)


def forget_checkpoint_scores_before_edit(trainer: L.Trainer, who: str) -> None:
    """Make every monitoring ``ModelCheckpoint`` forget its best-k ranking after the model was edited.

    Scores measured on the model before an edit do not describe the edited model; without this, a
    checkpoint callback keeps a pre-edit file as "best" and may save (or link ``last.ckpt`` to) an edited
    model under a pre-edit score. The pre-edit files of a top-k callback (``save_top_k > 0``) are removed,
    as the callback itself would remove outranked files; with ``save_top_k=-1`` they stay on disk, unranked.
    The next validation ranks the edited model afresh.
    """
    for cb in trainer.checkpoint_callbacks:
        if not isinstance(cb, ModelCheckpoint) or cb.monitor is None or not cb.best_k_models:
            continue
        dropped = sorted(cb.best_k_models)
        cb.best_k_models = {}
        cb.kth_best_model_path = cb.best_model_path = ""
        cb.best_model_score = None
        cb.kth_value = torch.tensor(torch.inf if cb.mode == "min" else -torch.inf)
        # A top-k callback would have deleted these once outranked; an edited model outranks them by definition.
        removable = [p for p in dropped if cb.save_top_k > 0 and p != cb.last_model_path]
        for path in removable:
            trainer.strategy.remove_checkpoint(path)
        kept = [p for p in dropped if p not in removable]
        rank_zero_info(
            f"{who}: the model was edited at epoch {trainer.current_epoch}; ModelCheckpoint(monitor={cb.monitor!r}) "
            f"now ranks only checkpoints of the edited model. Pre-edit checkpoints removed (top-k): {removable or 'none'}"
            + (f"; kept on disk but no longer ranked: {kept}" if kept else "") + "."
        )
    if trainer.state.fn == "fit" and not _validates_this_epoch(trainer):
        rank_zero_warn(
            f"{who}: no validation runs after the edit at epoch {trainer.current_epoch}, so any checkpoint saved at "
            "this epoch's end is scored with metrics measured before the edit. Validate every epoch "
            "(check_val_every_n_epoch=1) to score the edited model."
        )


def _validates_this_epoch(trainer: L.Trainer) -> bool:
    every = trainer.check_val_every_n_epoch
    has_val = getattr(trainer, "enable_validation", True) and trainer.limit_val_batches != 0
    return bool(has_val) and (every is None or (trainer.current_epoch + 1) % every == 0)
