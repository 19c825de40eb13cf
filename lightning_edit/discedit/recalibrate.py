"""BatchNorm recalibration after a structural edit.

Removing or masking channels shifts the input distribution of every following BatchNorm away from its running
statistics, which alone can drop a pruned network to chance before any fine-tuning. Re-estimating the running
mean and variance on a few calibration batches ("adaptive BN", Li et al., EagleEye, ECCV 2020, Sec. 3.2) is
standard practice in the pruning literature. The estimate is the cumulative average over the batches
(``momentum=None``), computed by torch's own :func:`torch.optim.swa_utils.update_bn`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.swa_utils import update_bn


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``model`` that track running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def recalibrate_batchnorm(
    model: nn.Module, batches: Iterable[Any], limit: int | None = None,
    reduce_mean: Callable[[Tensor], Tensor] | None = None,
) -> int:
    """Reset and re-estimate the running statistics of every BatchNorm of ``model`` on calibration batches.

    Args:
        model: the network; its training mode is restored afterwards, its parameters are not changed.
        batches: ``(x, y, ...)`` batches or input tensors ``x (N, ...)`` on the model's device.
        limit: use at most this many batches (None: all).
        reduce_mean: averages a tensor across DDP ranks (e.g. ``lambda t: trainer.strategy.reduce(t, reduce_op="mean")``)
            so that every rank ends with the same statistics; None for one process.

    Returns:
        the number of BatchNorm layers recalibrated (0: the model has none, nothing was run).

    Raises:
        ValueError: if ``batches`` yields no batch (the statistics are left as they were).
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    iterator = iter(batches if limit is None else itertools.islice(batches, limit))
    first = next(iterator, None)
    if first is None:
        raise ValueError("BatchNorm recalibration got no calibration batch; the running statistics were left as they were.")
    with torch.no_grad():
        update_bn(itertools.chain([first], iterator), model)
    if reduce_mean is not None:
        for bn in layers:
            bn.running_mean.copy_(reduce_mean(bn.running_mean))
            bn.running_var.copy_(reduce_mean(bn.running_var))
    return len(layers)
