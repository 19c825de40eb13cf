"""Helpers shared by the editing callbacks: batches, loaders, evaluation, output files."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
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
        ValueError: no such loader, targets that are not 1-D integer class indices, outputs that are not
            ``(N, K)`` logits, or targets outside ``[0, K)``.
    """
    from lightning_edit.discedit.moments import check_targets

    loader = stage_loader(trainer, source)
    if loader is None:
        raise ValueError(f"{who} needs a {source} dataloader for calibration; none is defined.")
    x, y = get_xy(next(iter(loader)))
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
