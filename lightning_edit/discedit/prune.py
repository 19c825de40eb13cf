"""DISCEDIT-SP without a Trainer: score channels, plan to a sparsity, remove them (Murti & Bhattacharyya 2024, Sec. 4)."""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch_pruning as tp
from torch import Tensor, nn

from lightning_edit.discedit.recalibrate import recalibrate_batchnorm
from lightning_edit.discedit.redundancy import record_correlations, redundancy_adjusted_scores
from lightning_edit.discedit.heads import discedit_head_scores, l1_head_scores, random_head_scores
from lightning_edit.discedit.subset import check_classes, keep_classes, output_layer, subset_batches
from lightning_edit.discedit.scores import check_discedit_options, get_witness, pruning_scores, score_components
from lightning_edit.discedit.structured import (
    append_pruning_record,
    apply_pruning,
    build_dependency_graph,
    channel_groups,
    cost_after,
    count_macs_params,
    group_scores,
    is_head_attention,
    prunable_layers,
    select_channels,
    target_width,
)


TORCH_PRUNING_IMPORTANCES: dict[str, Callable[[], Any]] = {
    "tp_l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "tp_l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "taylor": lambda: tp.importance.GroupTaylorImportance(),
    "bn_scale": lambda: tp.importance.BNScaleImportance(),
    "lamp": lambda: tp.importance.LAMPImportance(p=2),
}
"""Baseline criteria taken from torch-pruning, by name: group L1/L2 magnitude (Li et al. 2017), first-order Taylor
(Molchanov et al. 2019), BatchNorm scale |γ| (Liu et al. 2017, network slimming), LAMP (Lee et al. 2021). Each is
normalised within its group by torch-pruning (``normalizer="mean"``; LAMP by its own rule)."""
NEEDS_GRADIENTS = ("taylor",)
IMPORTANCES = ("discedit", "l1", "random", *TORCH_PRUNING_IMPORTANCES)
"""Every ``importance`` name: ``"discedit"`` (the paper), ``"l1"``, ``"random"`` and torch-pruning's criteria."""
SPARSITY_TYPES = ("channels", "parameters", "macs")
"""What ``sparsity`` counts: each layer's channels, the model's parameters, or its MACs."""


def torch_pruning_scores(
    model: nn.Module, layers: Mapping[str, nn.Module], importance: str, example_input: Tensor,
    batches: Iterable[tuple[Tensor, Tensor]] | None = None, classes: Sequence[int] | None = None,
) -> dict[str, Tensor]:
    """Per-channel scores of ``layers`` by one of torch-pruning's importance criteria, through its API.

    Each layer's output channels form a torch-pruning group (with every coupled layer), scored by the criterion.
    ``"taylor"`` needs gradients: the cross-entropy of ``model`` (eval mode, BatchNorm statistics untouched; with
    ``classes``, of its logits of those classes, the batches' labels being positions in ``classes``) is
    back-propagated over ``batches`` first, and the gradients are cleared afterwards. A layer whose group has no
    BatchNorm gets group L2 magnitude under ``"bn_scale"`` (with a warning).

    A ViT-style attention module in ``layers`` gets one score per head: the mean over the head's coordinates of
    ``proj``'s input group (torch-pruning's head rule).

    Returns:
        layer name -> ``(C_out,)`` (or ``(num_heads,)``) float64 (low = remove first).

    Raises:
        ValueError: for an unknown criterion, or ``"taylor"`` without ``batches`` (names the alternatives).
    """
    if importance not in TORCH_PRUNING_IMPORTANCES:
        raise ValueError(f"Unknown torch-pruning importance {importance!r}; choose one of {sorted(TORCH_PRUNING_IMPORTANCES)}.")
    if importance in NEEDS_GRADIENTS and batches is None:
        raise ValueError(f"importance={importance!r} needs gradients of a loss: pass calibration batches, or choose one "
                         f"that needs none: {[n for n in IMPORTANCES if n not in NEEDS_GRADIENTS]}.")
    dg = build_dependency_graph(model, example_input)
    was_training = model.training
    if importance in NEEDS_GRADIENTS:
        model.eval()
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            for x, y in batches:
                logits = model(x) if classes is None else model(x)[:, list(classes)]
                torch.nn.functional.cross_entropy(logits, y).backward()
    try:
        criterion, fallback = TORCH_PRUNING_IMPORTANCES[importance](), TORCH_PRUNING_IMPORTANCES["tp_l2"]()
        scores = {}
        for name, layer in layers.items():
            if is_head_attention(layer):  # proj's input coordinates, coupled with qkv's q, k and v rows
                group = dg.get_pruning_group(layer.proj, tp.prune_linear_in_channels,
                                             idxs=list(range(layer.proj.in_features)))
            else:
                prune_fn = tp.prune_conv_out_channels if isinstance(layer, nn.Conv2d) else tp.prune_linear_out_channels
                group = dg.get_pruning_group(layer, prune_fn, idxs=list(range(layer.weight.shape[0])))
            value = criterion(group)
            if value is None:
                warnings.warn(f"{importance}: layer {name!r} has no BatchNorm in its group; scored by group L2 magnitude.")
                value = fallback(group)
            value = value.detach().to(torch.float64)
            scores[name] = value.view(layer.num_heads, -1).mean(1) if is_head_attention(layer) else value
    finally:
        if importance in NEEDS_GRADIENTS:
            model.zero_grad(set_to_none=True)
        model.train(was_training)
    return scores


def channel_scores(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    importance: str = "discedit",
    batches: Iterable[tuple[Tensor, Tensor]] | None = None,
    num_classes: int | None = None,
    witness: str = "fisher",
    reduce_sum: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
    class_reduction: Literal["min", "max", "mean"] = "min",
    site: Literal["conv", "activation"] = "conv",
    example_input: Tensor | None = None,
    normalize: bool = False,
    redundancy: float = 0.0,
    classes: Sequence[int] | None = None,
) -> dict[str, Tensor]:
    """Per-channel scores of each layer (low = remove first).

    ``classes`` (class-subset specialisation, :mod:`lightning_edit.discedit.subset`): only the samples of these
    classes are read, labelled by their position in ``classes``, so DISCEDIT's bounds are one-vs-rest within the
    subset and ``num_classes`` becomes ``len(classes)``; Taylor's loss reads those classes' logits. ``batches`` carry
    the model's original labels.

    ``importance`` is ``"discedit"`` (the paper), ``"l1"`` / ``"random"`` (our own baselines), or a torch-pruning
    criterion of :data:`TORCH_PRUNING_IMPORTANCES` (``"tp_l1"``, ``"tp_l2"``, ``"taylor"``, ``"bn_scale"``,
    ``"lamp"``; scored by :func:`torch_pruning_scores` on ``example_input``, default the first batch's first
    input). ``site`` chooses where DISCEDIT reads a channel's map (``"conv"`` or ``"activation"``).

    ``normalize`` divides each layer's DISCEDIT / L1 / random scores by their mean over the layer, so that one
    global ranking compares channels relative to their layer (TV bounds and norms differ in scale from layer to
    layer; torch-pruning normalises its criteria the same way, ``normalizer="mean"``, so ``normalize`` does not
    change them). The authors avoid the question with per-layer budgets; use it with ``scope="global"``.

    ``"discedit"``: ``min_c`` TV bound between class c and the rest over calibration ``batches`` of
    ``(x, y)`` on the model's device (moments summed by ``reduce_sum`` across DDP ranks when given;
    ``class_reduction`` as in :func:`pruning_scores`);
    ``"l1"``: filter L1 norm; ``"random"``: uniform.

    A ViT-style attention module in ``layers`` (:func:`~lightning_edit.discedit.structured.is_head_attention`) gets
    one score per head; :mod:`lightning_edit.discedit.heads` defines what each criterion scores for a head.

    ``redundancy`` > 0 (DISCEDIT only, a departure from the paper): the scores are reordered by greedy
    minimum-redundancy maximum-relevance selection within each layer, gain ``r_j - redundancy · mean |ρ_jk|`` over the
    channels already kept (:mod:`lightning_edit.discedit.redundancy`; 1 is mRMR's difference form). The channel
    correlations are summed in the same pass as the moments; it applies per layer, so it is refused with
    ``normalize`` (global scope).

    Returns:
        layer name -> ``(C_out,)`` float64 (``(num_heads,)`` for an attention module).

    Raises:
        ValueError: for an unknown importance, missing ``batches``/``num_classes`` for DISCEDIT, ``redundancy``
            with attention modules in ``layers``, a non-default
            ``witness``, ``site``, ``class_reduction`` or ``redundancy`` with another importance (they would not be
            read), a negative ``redundancy`` or one with ``normalize=True``, or
            calibration data with fewer than two classes. A class absent from the data only warns (scores use the rest).
    """
    def check_counts(counts: Tensor) -> None:
        present = int((counts > 0).sum())
        if present < 2:
            raise ValueError(f"Calibration data holds {present} class(es); DISCEDIT needs at least 2 to score channels.")
        if present < len(counts):
            missing = (counts == 0).nonzero().flatten().tolist()
            warnings.warn(f"classes {missing} are absent from the calibration data; scoring on the rest.", UserWarning)

    if classes is not None:
        classes = check_classes(classes, num_classes)
        if batches is not None:
            batches = list(subset_batches(batches, classes))
            if not batches:
                raise ValueError(f"The calibration batches hold no sample of classes {classes}.")
        num_classes = len(classes)
    check_discedit_options(importance, witness=(witness, "fisher"), site=(site, "conv"),
                           class_reduction=(class_reduction, "min"), redundancy=(redundancy, 0.0))
    if redundancy < 0:
        raise ValueError(f"redundancy must be >= 0, got {redundancy}.")
    if redundancy and normalize:
        raise ValueError("redundancy reorders channels within each layer; it has no global ranking. Use per-layer "
                         "budgets (normalize=False, scope='layer'), or redundancy=0.")
    heads = {n: m for n, m in layers.items() if is_head_attention(m)}
    if heads and importance in ("discedit", "l1", "random"):
        if redundancy:
            raise ValueError(f"redundancy reorders channels of a layer; attention heads {list(heads)} have no "
                             "channel correlations: use redundancy=0, or leave the attention modules out of layers.")
        batches = list(batches) if batches is not None else None
        channels = {n: m for n, m in layers.items() if n not in heads}
        scores = channel_scores(model, channels, importance, batches, num_classes, witness, reduce_sum, generator,
                                class_reduction, site, example_input, normalize) if channels else {}
        if importance == "discedit":
            if batches is None or num_classes is None:
                raise ValueError("DISCEDIT scores need calibration `batches` of (x, y) and `num_classes`.")
            head = discedit_head_scores(model, heads, batches, num_classes, get_witness(witness), reduce_sum,
                                        class_reduction)
        elif importance == "l1":
            head = l1_head_scores(heads)
        else:
            head = random_head_scores(heads, generator)
        if normalize:
            head = {n: v / v[v.isfinite()].mean().clamp_min(1e-12) for n, v in head.items()}
        return {n: (head[n] if n in heads else scores[n]) for n in layers}
    if importance in TORCH_PRUNING_IMPORTANCES:
        batches = list(batches) if batches is not None else None
        if example_input is None:
            if not batches:
                raise ValueError(f"importance={importance!r} needs example_input (or calibration batches) to trace the model.")
            example_input = batches[0][0][:1]
        return torch_pruning_scores(model, layers, importance, example_input, batches, classes)
    # the correlations for ``redundancy`` are summed in the same forward passes as the moments
    with record_correlations(model, layers, site) if redundancy else nullcontext() as correlations:
        scores = score_components(
            model, layers, importance, lambda m, w: pruning_scores(m, w, class_reduction), batches, num_classes, witness,
            reduce_sum, generator, check_counts, site,
        )
    if redundancy:
        rho = correlations(reduce_sum)
        scores = {n: redundancy_adjusted_scores(v, rho[n], redundancy) for n, v in scores.items()}
    if normalize:
        scores = {n: v / v[v.isfinite()].mean().clamp_min(1e-12) for n, v in scores.items()}
    return scores


@dataclass
class PruneResult:
    """What one pruning step did: the plan (group root -> removed indices), torch-pruning's history,
    channels removed, and the channel sparsity reached over the prunable groups' original widths."""

    plan: dict[str, list[int]]
    history: list[list[Any]]
    removed: int
    sparsity: float


def max_sparsity(model: nn.Module, example_input: Tensor, layers: Mapping[str, nn.Module] | None = None,
                 sparsity_type: Literal["parameters", "macs"] = "macs", min_channels: int = 1,
                 dense: int | None = None) -> float:
    """The largest fraction of the parameters or MACs (of ``dense``, default the current count) that channel pruning
    of ``layers`` can remove when no group goes below ``min_channels`` (every group at that width). ``model`` is
    untouched."""
    layers = layers if layers is not None else prunable_layers(model)
    dg = build_dependency_graph(model, example_input)
    narrowest = {g.root: list(range(g.width - min_channels)) for g in channel_groups(model, dg, layers) if g.width > min_channels}
    if dense is None:
        dense = count_macs_params(model, example_input)[0] if sparsity_type == "macs" else sum(p.numel() for p in model.parameters())
    return 1.0 - cost_after(model, example_input, narrowest, sparsity_type) / dense


def prune_channels(
    model: nn.Module,
    example_input: Tensor,
    scores: Mapping[str, Tensor],
    sparsity: float,
    layers: Mapping[str, nn.Module] | None = None,
    sparsity_type: Literal["channels", "parameters", "macs"] = "channels",
    scope: Literal["layer", "global"] = "layer",
    min_channels: int | None = None,
    original_widths: dict[str, int] | None = None,
    dense_params: int | None = None,
    recalibration_batches: Iterable[Any] | None = None,
    dense_macs: int | None = None,
    classes: Sequence[int] | None = None,
) -> PruneResult:
    """Remove the lowest-scored channels of ``model`` in place so that it reaches ``sparsity``.

    Args:
        model: the network; it stays untouched if planning fails.
        example_input: one input batch ``(1, ...)`` on the model's device, for tracing.
        scores: layer name -> ``(C_out,)`` scores from :func:`channel_scores`.
        sparsity: fraction of each group's *original* width (``"channels"``), of ``dense_params``
            (``"parameters"``) or of ``dense_macs`` (``"macs"``: multiply-accumulates of one ``example_input``,
            torch-pruning's counter) to remove, in [0, 1); the last two by bisection on the channel fraction over
            pruned copies.
        sparsity_type: ``"channels"``, ``"parameters"`` or ``"macs"``.
        layers: the scored layers (default :func:`prunable_layers`).
        scope, min_channels: see :func:`select_channels`.
        original_widths: group root -> width before any pruning; filled in on the first call and reused by
            later calls of a gradual schedule (pass the same dict).
        dense_params: parameter count before any pruning (default: the current count).
        dense_macs: MACs before any pruning (default: the current count), for ``sparsity_type="macs"``.
        recalibration_batches: if given, ``(x, y)`` batches on the model's device on which the BatchNorm running
            statistics are re-estimated after the removal (:func:`~lightning_edit.discedit.recalibrate_batchnorm`;
            with ``classes``, on those classes' samples only).
        classes: class-subset specialisation (:mod:`lightning_edit.discedit.subset`): after the channels, the
            classifier's rows of every other class are removed and the rest put in this order, so the model outputs
            ``len(classes)`` logits, output ``j`` being class ``classes[j]``. Score with the same ``classes``.

    Returns:
        a :class:`PruneResult`; the model also records the history (:func:`enable_edit_reload`).

    Raises:
        ValueError: before the model changes, for an unknown ``sparsity_type``, a sparsity outside [0, 1), bad
            ``classes`` (fewer than 2, duplicates, outside the model's outputs), a group
            that would be pruned to zero width (set ``min_channels``), or a MACs target that ``min_channels`` makes
            unreachable (the message gives the reachable maximum).
    """
    if sparsity_type not in SPARSITY_TYPES:
        raise ValueError(f"sparsity_type must be one of {SPARSITY_TYPES}, got {sparsity_type!r}.")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}.")
    if classes is not None:
        classes = check_classes(classes, output_layer(model)[1].out_features)
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
        if sparsity_type == "macs":
            dense = dense_macs or count_macs_params(model, example_input)[0]
            most = max_sparsity(model, example_input, layers, "macs", min_channels or 1, dense=dense)
            if sparsity > most:
                raise ValueError(
                    f"A MACs sparsity of {sparsity:.3f} cannot be reached: with min_channels={min_channels} the most "
                    f"that channel pruning of these layers removes is {most:.3f} of the MACs. Ask for at most "
                    f"{most:.3f}, lower min_channels, or prune more layers.")
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
            kept = cost_after(model, example_input, trial, sparsity_type) / dense
            lo, hi = (mid, hi) if kept > 1.0 - sparsity else (lo, mid)
        plan = plan_for(lo)

    history = apply_pruning(model, dg, plan)
    append_pruning_record(model, list(example_input.shape), history)
    if classes is not None:
        keep_classes(model, classes)
    if recalibration_batches is not None:
        recalibrate_batchnorm(model, recalibration_batches if classes is None
                              else subset_batches(recalibration_batches, classes))
    removed = sum(len(v) for v in plan.values())
    remaining = sum(g.width for g in groups) - removed
    return PruneResult(plan, history, removed, 1.0 - remaining / sum(original_widths[g.root] for g in groups))
