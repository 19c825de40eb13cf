"""Criterion selection on held-out data: every candidate criterion prunes a copy of the model to the same sparsity,
the copy's BatchNorm statistics are re-estimated, and the copy is measured on a selection split; the best is kept.

Our benchmarks found no single criterion best everywhere (DISCEDIT, the paper's, below torch-pruning's LAMP and BN
scale on VGG-11 without fine-tuning, the best at 70% on ResNet-20), so the package measures instead of guessing.
The selection split must be neither the calibration data (the criteria were fitted on it) nor the test set.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_edit.discedit.prune import PruneResult, channel_scores, prune_channels
from lightning_edit.discedit.structured import prunable_layers
from lightning_edit.discedit.subset import check_classes, keep_classes, output_layer, subset_batches

CANDIDATES: dict[str, dict[str, str]] = {
    "discedit": {"importance": "discedit", "site": "conv", "scope": "layer"},
    "discedit_activation": {"importance": "discedit", "site": "activation", "scope": "layer"},
    "tp_l2": {"importance": "tp_l2", "scope": "layer"},
    "bn_scale": {"importance": "bn_scale", "scope": "layer"},
    "lamp_global": {"importance": "lamp", "scope": "global"},
    "taylor": {"importance": "taylor", "scope": "layer"},
}
"""Candidate name -> the ``channel_scores`` importance, DISCEDIT feature site and pruning scope it stands for."""

DEFAULT_CANDIDATES = tuple(CANDIDATES)
"""DISCEDIT at both feature sites, torch-pruning's group L2, BN scale, LAMP (global ranking) and Taylor."""


@dataclass
class SelectionReport:
    """What the selection measured.

    Attributes:
        importance: the winning candidate's name (a key of :data:`CANDIDATES`).
        table: candidate -> top-1 accuracy on the selection batches after pruning and BN recalibration, in [0, 1].
        seconds: candidate -> wall time of its scoring, pruning, recalibration and measurement (s).
        sparsity_reached: candidate -> the pruning step's channel sparsity.
    """

    importance: str
    table: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    sparsity_reached: dict[str, float] = field(default_factory=dict)

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


def check_candidates(candidates: Sequence[str] | None) -> list[str]:
    """The candidate list, checked.

    Raises:
        ValueError: an unknown name (the message lists the known ones), a duplicate, or fewer than two candidates
            (there would be nothing to select).
    """
    names = list(DEFAULT_CANDIDATES if candidates is None else candidates)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise ValueError(f"Unknown candidate(s) {unknown}; choose from {list(CANDIDATES)}.")
    if len(set(names)) != len(names):
        raise ValueError(f"candidates has duplicates: {names}.")
    if len(names) < 2:
        raise ValueError(f"importance='auto' selects among candidates, but got {names}; give at least two, or name "
                         "the criterion directly as importance=.")
    return names


@torch.no_grad()
def selection_accuracy(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
                       reduce_sum: Callable[[Tensor], Tensor] | None = None) -> float:
    """Top-1 accuracy of ``model`` (eval mode, restored after) on ``(x, y)`` batches; counts summed by
    ``reduce_sum`` across DDP ranks when given, so every rank gets the same number."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    try:
        for x, y in batches:
            counts[0] += (model(x).argmax(1) == y).sum()
            counts[1] += y.numel()
    finally:
        model.train(was_training)
    if reduce_sum is not None:
        counts = reduce_sum(counts)
    if counts[1] == 0:
        raise ValueError("The selection batches are empty; give held-out (x, y) batches to measure the candidates on.")
    return float(counts[0] / counts[1])


def prune_with(model: nn.Module, candidate: str, example_input: Tensor, calibration_batches: Sequence[Any],
               sparsity: float, layer_names: Sequence[str], num_classes: int,
               sparsity_type: Literal["channels", "parameters", "macs"] = "parameters",
               min_channels: int | None = None, reduce_sum: Callable[[Tensor], Tensor] | None = None,
               recalibrate: bool = True, **prune_options: Any) -> PruneResult:
    """Prune ``model`` in place with one candidate criterion of :data:`CANDIDATES`, then re-estimate its BatchNorm
    statistics on ``calibration_batches`` (``recalibrate``). ``prune_options`` go to :func:`prune_channels`."""
    spec = CANDIDATES[candidate]
    modules = dict(model.named_modules())
    layers = {n: modules[n] for n in layer_names}
    importance, scope = spec["importance"], spec["scope"]
    extra = {"site": spec["site"]} if importance == "discedit" else {}
    scores = channel_scores(model, layers, importance, calibration_batches, num_classes, reduce_sum=reduce_sum,
                            example_input=example_input, normalize=scope == "global",
                            **extra)
    return prune_channels(model, example_input, scores, sparsity, layers, sparsity_type, scope, min_channels,
                          recalibration_batches=calibration_batches if recalibrate else None, **prune_options)


def select_and_prune(
    model: nn.Module,
    example_input: Tensor,
    calibration_batches: Sequence[tuple[Tensor, Tensor]],
    selection_batches: Sequence[tuple[Tensor, Tensor]],
    sparsity: float,
    layers: Sequence[str] | None = None,
    candidates: Sequence[str] | None = None,
    num_classes: int | None = None,
    sparsity_type: Literal["channels", "parameters", "macs"] = "parameters",
    min_channels: int | None = None,
    on_candidate: Callable[[str, nn.Module], None] | None = None,
    classes: Sequence[int] | None = None,
) -> tuple[nn.Module, SelectionReport]:
    """Prune a copy of ``model`` with every candidate criterion, measure each on ``selection_batches``, return the best.

    Each candidate scores the channels on ``calibration_batches``, prunes its own deep copy to the same
    ``sparsity`` (``sparsity_type``, default a fraction of the parameters), re-estimates the BatchNorm statistics on
    the calibration batches and is measured on the selection batches. Ties go to the earlier candidate.

    Args:
        model: the trained network; it is not modified.
        example_input: one input ``(1, ...)`` on the model's device, for tracing.
        calibration_batches: ``(x (B, ...), y (B,))`` pairs on the model's device, for scoring and recalibration.
        selection_batches: held-out ``(x, y)`` pairs: neither the calibration data nor the test set (a validation
            split).
        sparsity: fraction to remove, in [0, 1).
        layers: names of the layers to prune (default :func:`~lightning_edit.discedit.prunable_layers`).
        candidates: names of :data:`CANDIDATES` (default :data:`DEFAULT_CANDIDATES`).
        num_classes: number of classes (default: the model's output width on ``example_input``).
        sparsity_type, min_channels: as in :func:`~lightning_edit.discedit.prune_channels`.
        on_candidate: called as ``on_candidate(name, pruned_copy)`` after each candidate is measured, e.g. to log
            it or to measure it on other data (the benchmark's test accuracy of every candidate); it must not modify
            the copy.
        classes: class-subset specialisation (:mod:`lightning_edit.discedit.subset`): the classifier is first cut to
            these classes (in this order), and scoring, recalibration and selection read only their samples, labelled
            by position; the batches carry the model's original labels.

    Returns:
        ``(pruned copy, report)``; ``report.importance`` names the winner, ``report.table`` maps each candidate to
        its selection accuracy, ``report.seconds`` to its cost.

    Raises:
        ValueError: before anything is pruned, for unknown, duplicate or fewer than two candidates, empty
            calibration or selection batches (of ``classes``), bad ``classes``, or a sparsity outside [0, 1).
    """
    names = check_candidates(candidates)
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}.")
    calibration_batches, selection_batches = list(calibration_batches), list(selection_batches)
    if not calibration_batches:
        raise ValueError("calibration_batches is empty; the criteria need (x, y) batches to score channels on.")
    if not selection_batches:
        raise ValueError("selection_batches is empty; give held-out (x, y) batches (a validation split) to select on.")
    if classes is not None:
        classes = check_classes(classes, output_layer(model)[1].out_features)
        model = copy.deepcopy(model)
        keep_classes(model, classes)
        calibration_batches = list(subset_batches(calibration_batches, classes))
        selection_batches = list(subset_batches(selection_batches, classes))
        if not calibration_batches or not selection_batches:
            raise ValueError(f"The calibration or selection batches hold no sample of classes {classes}.")
        num_classes = len(classes)
    layer_names = list(layers) if layers is not None else list(prunable_layers(model))
    if num_classes is None:
        with torch.no_grad():
            num_classes = int(model.eval()(example_input).shape[1])
    report = SelectionReport(importance=names[0])
    best: nn.Module | None = None
    for name in names:
        start = time.perf_counter()
        pruned = copy.deepcopy(model)
        result = prune_with(pruned, name, example_input, calibration_batches, sparsity, layer_names, num_classes,
                            sparsity_type, min_channels)
        report.table[name] = selection_accuracy(pruned, selection_batches)
        report.sparsity_reached[name] = result.sparsity
        report.seconds[name] = time.perf_counter() - start
        if on_candidate is not None:
            on_candidate(name, pruned)
        if best is None or report.table[name] > report.table[report.importance]:
            report.importance, best = name, pruned
    return best.eval(), report
