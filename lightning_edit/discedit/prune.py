"""DISCEDIT-SP without a Trainer: score channels, plan to a sparsity, remove them (Murti & Bhattacharyya 2024, Sec. 4)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_edit.discedit.recalibrate import recalibrate_batchnorm
from lightning_edit.discedit.scores import pruning_scores, score_components
from lightning_edit.discedit.structured import (
    append_pruning_record,
    apply_pruning,
    build_dependency_graph,
    channel_groups,
    group_scores,
    parameter_count_after,
    prunable_layers,
    select_channels,
    target_width,
)


def channel_scores(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    importance: Literal["discedit", "l1", "random"] = "discedit",
    batches: Iterable[tuple[Tensor, Tensor]] | None = None,
    num_classes: int | None = None,
    witness: str = "fisher",
    reduce_sum: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
    class_reduction: Literal["min", "max", "mean"] = "min",
) -> dict[str, Tensor]:
    """Per-channel scores of each layer (low = remove first).

    ``"discedit"``: ``min_c`` TV bound between class c and the rest over calibration ``batches`` of
    ``(x, y)`` on the model's device (moments summed by ``reduce_sum`` across DDP ranks when given;
    ``class_reduction`` as in :func:`pruning_scores`);
    ``"l1"``: filter L1 norm; ``"random"``: uniform.

    Returns:
        layer name -> ``(C_out,)`` float64.

    Raises:
        ValueError: for an unknown importance, missing ``batches``/``num_classes`` for DISCEDIT, or calibration
            data with fewer than two classes. A class absent from the data only warns (scores use the rest).
    """
    def check_counts(counts: Tensor) -> None:
        present = int((counts > 0).sum())
        if present < 2:
            raise ValueError(f"Calibration data holds {present} class(es); DISCEDIT needs at least 2 to score channels.")
        if present < len(counts):
            missing = (counts == 0).nonzero().flatten().tolist()
            warnings.warn(f"classes {missing} are absent from the calibration data; scoring on the rest.", UserWarning)

    return score_components(
        model, layers, importance, lambda m, w: pruning_scores(m, w, class_reduction), batches, num_classes, witness,
        reduce_sum, generator, check_counts,
    )


@dataclass
class PruneResult:
    """What one pruning step did: the plan (group root -> removed indices), torch-pruning's history,
    channels removed, and the channel sparsity reached over the prunable groups' original widths."""

    plan: dict[str, list[int]]
    history: list[list[Any]]
    removed: int
    sparsity: float


def prune_channels(
    model: nn.Module,
    example_input: Tensor,
    scores: Mapping[str, Tensor],
    sparsity: float,
    layers: Mapping[str, nn.Module] | None = None,
    sparsity_type: Literal["channels", "parameters"] = "channels",
    scope: Literal["layer", "global"] = "layer",
    min_channels: int | None = None,
    original_widths: dict[str, int] | None = None,
    dense_params: int | None = None,
    recalibration_batches: Iterable[Any] | None = None,
) -> PruneResult:
    """Remove the lowest-scored channels of ``model`` in place so that it reaches ``sparsity``.

    Args:
        model: the network; it stays untouched if planning fails.
        example_input: one input batch ``(1, ...)`` on the model's device, for tracing.
        scores: layer name -> ``(C_out,)`` scores from :func:`channel_scores`.
        sparsity: fraction of each group's *original* width (``"channels"``) or of ``dense_params``
            (``"parameters"``; bisection on the channel fraction over pruned copies) to remove, in [0, 1).
        layers: the scored layers (default :func:`prunable_layers`).
        scope, min_channels: see :func:`select_channels`.
        original_widths: group root -> width before any pruning; filled in on the first call and reused by
            later calls of a gradual schedule (pass the same dict).
        dense_params: parameter count before any pruning (default: the current count).
        recalibration_batches: if given, ``(x, y)`` batches on the model's device on which the BatchNorm running
            statistics are re-estimated after the removal (:func:`~lightning_edit.discedit.recalibrate_batchnorm`).

    Returns:
        a :class:`PruneResult`; the model also records the history (:func:`enable_edit_reload`).

    Raises:
        ValueError: if a group would be pruned to zero width (set ``min_channels``).
    """
    layers = layers if layers is not None else prunable_layers(model)
    original_widths = original_widths if original_widths is not None else {}
    dg = build_dependency_graph(model, example_input)
    groups = channel_groups(model, dg, layers)
    for g in groups:
        original_widths.setdefault(g.root, g.width)
    gscores = {g.root: group_scores(g, scores) for g in groups}

    def plan_for(channel_sparsity: float) -> dict[str, list[int]]:
        widths = {g.root: target_width(original_widths[g.root], channel_sparsity, min_channels) for g in groups}
        small = [g.root for g in groups if widths[g.root] < 1]
        if small:
            raise ValueError(f"Sparsity {channel_sparsity:.3f} would prune {small} to zero width; set min_channels >= 1.")
        return select_channels(groups, gscores, widths, scope, min_channels)

    if sparsity_type == "channels":
        plan = plan_for(sparsity)
    else:
        dense = dense_params or sum(p.numel() for p in model.parameters())
        lo, hi = 0.0, 1.0 - 1e-6
        for _ in range(12):
            mid = 0.5 * (lo + hi)
            try:
                trial = plan_for(mid)
            except ValueError:
                hi = mid
                continue
            kept = parameter_count_after(model, example_input, trial) / dense
            lo, hi = (mid, hi) if kept > 1.0 - sparsity else (lo, mid)
        plan = plan_for(lo)

    history = apply_pruning(model, dg, plan)
    append_pruning_record(model, list(example_input.shape), history)
    if recalibration_batches is not None:
        recalibrate_batchnorm(model, recalibration_batches)
    removed = sum(len(v) for v in plan.values())
    remaining = sum(g.width for g in groups) - removed
    return PruneResult(plan, history, removed, 1.0 - remaining / sum(original_widths[g.root] for g in groups))
