"""DISCEDIT-U: class unlearning by masking the components most discriminative for the forget class.

Murti & Bhattacharyya, NeurIPS 2024, Sec. 4 (DISCEDIT-U); METHODS.md Sec. 1 "Scores" and
"Algorithms". Component j of a layer scores ``r_j = TV-bound(P_c, Q_c)`` (class c against the
rest); the highest-scored components are masked: their filter / neuron weights and bias and the
BatchNorm that follows are multiplied by a zero mask (``torch.nn.utils.prune``), so the
architecture is kept, the masked values stay zero through fine-tuning, and the masks are part of
the state dict.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import prune as torch_prune

from lightning_edit.discedit.prefix import PrefixReplay
from lightning_edit.discedit.recalibrate import batchnorm_layers, recalibrate_batchnorm
from lightning_edit.discedit.scores import check_discedit_options, check_random_seed, score_components, unlearning_scores
from lightning_edit.discedit.structured import build_dependency_graph, enable_edit_reload, prunable_layers
from lightning_edit.discedit.subset import output_layer


RECALIBRATION_BATCHES = 4
"""Calibration batches on which BatchNorm statistics are re-estimated under a candidate mask (and after masking):
the first four (512 samples at batch size 128) estimate a channel's mean and variance well, at a quarter of the cost
of the whole calibration set, which the ratio search pays once per candidate."""
DEFAULT_FORGET_TARGET = 0.02
"""Calibration forget accuracy at which ``ratio="auto"`` stops. Calibration images are training images, on which a
well-learned class can stay a few points less accurate after masking than on unseen ones. Chosen on the validation
split of ResNet-20 without fine-tuning (``benchmarks/unlearning_forget_target.py``: forget accuracy ≤ 5% at RA ≤ 2
points on 16 of 17 high-accuracy pairs, against 14 at 0.05 and 15 at 0.0), for 18% of the edited layers' weights
masked instead of 13%. Mid-training use on a residual CNN of digits (unlearned after epoch 2, one fine-tuning
epoch, 10 seeds × classes 3, 5, 8, 1 and 2 threads; ``benchmarks/unlearning_midtraining_durability.py``) keeps the
class forgotten at least as well as 0.05: forget accuracy after the fine-tuning epoch at most 3.7% (0.05: 7.4%),
at 1.9 points of RA right after masking (0.05: 1.3)."""


def check_forget_classes(forget_classes: Sequence[int], num_classes: int) -> list[int]:
    """Validate forget classes against the model's K outputs.

    Raises:
        ValueError: if empty, outside ``[0, K)``, or covering every class.
    """
    classes = sorted(set(int(c) for c in forget_classes))
    if not classes:
        raise ValueError("forget_classes is empty; name at least one class index to forget.")
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"forget_classes {bad} are outside the model's outputs 0..{num_classes - 1}.")
    if len(classes) >= num_classes:
        raise ValueError(f"Cannot forget every class ({num_classes}); keep at least one class to remain.")
    return classes


def select_components(
    scores: Mapping[str, Tensor],
    ratio: float | None = 0.1,
    scope: Literal["layer", "global"] = "layer",
    std_threshold: float | None = None,
) -> dict[str, Tensor]:
    """Pick the highest-scored components to mask.

    Args:
        scores: layer name -> ``(C,)`` scores (high = most discriminative for the forget classes).
        ratio: fraction of components to mask, in (0, 1): of each layer (``scope="layer"``, at least one)
            or of all layers together (``"global"``).
        std_threshold: instead of ``ratio``, the authors' rule: mask ``r_j > mean(r) + k·std(r)`` per layer.

    Returns:
        layer name -> sorted ``(m,)`` long indices to mask.

    Raises:
        ValueError: for a ratio outside (0, 1) when no ``std_threshold`` is given.
    """
    if std_threshold is not None:
        out = {}
        for name, s in scores.items():
            s = s.detach().double()
            out[name] = torch.nonzero(s > s.mean() + std_threshold * s.std(correction=0)).flatten().cpu()
        return out
    if ratio is None or not 0.0 < ratio < 1.0:
        raise ValueError(f"masking ratio must be in (0, 1), got {ratio}.")
    if scope == "layer":
        return {n: torch.sort(torch.argsort(s.detach().cpu(), descending=True, stable=True)[: max(1, round(ratio * len(s)))]).values
                for n, s in scores.items()}
    names = list(scores)
    flat = torch.cat([scores[n].detach().cpu().double() for n in names])
    owner = torch.cat([torch.full((len(scores[n]),), i) for i, n in enumerate(names)])
    index = torch.cat([torch.arange(len(scores[n])) for n in names])
    top = torch.argsort(flat, descending=True, stable=True)[: max(1, round(ratio * len(flat)))]
    return {n: torch.sort(index[top][owner[top] == i]).values for i, n in enumerate(names)}


def component_parameters(
    model: nn.Module, layer: nn.Module, example_input: Tensor, dg: tp.DependencyGraph | None = None,
) -> list[tuple[nn.Module, str]]:
    """The parameters of one layer's output components: its ``weight``/``bias`` and those of the BatchNorm it feeds.

    The BatchNorm is found with torch-pruning's dependency graph (the norm layer whose out-channel
    dependency has this layer as its source), so it works for Sequential, ResNet and custom forwards.
    Pass ``dg`` (built once on ``model``) when asking for several layers.
    """
    params = [(layer, "weight")] + ([(layer, "bias")] if getattr(layer, "bias", None) is not None else [])
    dg = dg if dg is not None else build_dependency_graph(model, example_input)
    group = dg.get_pruning_group(layer, dg.get_pruner_of_module(layer).prune_out_channels, [0])
    for item in group:
        target = item.dep.target.module
        if isinstance(target, _BatchNorm) and item.dep.source.module is layer and target.affine:
            params += [(target, "weight"), (target, "bias")]
    return params


def coupled_writers(
    model: nn.Module, layers: Mapping[str, nn.Module], example_input: Tensor, dg: tp.DependencyGraph | None = None,
) -> dict[str, list[str]]:
    """Every Conv2d/Linear whose output channels are the same channels as each layer's (itself included).

    In a residual network the convolutions that add into one residual stream (a stage's second convolutions and its
    projection shortcut) write the same channels: torch-pruning's dependency graph puts them in one out-channel group.
    Masking channel j in only one of them removes that block's contribution and leaves the stream's channel j, which
    the identity shortcuts carry to the classifier; masking it in every writer removes the channel from the stream.
    Writers inside :class:`torch.nn.MultiheadAttention` (computed with fused weights) are never listed.

    Returns:
        layer name -> names of the layers writing its channels, in registration order (``[name]`` for a plain layer).
    """
    names = {id(m): n for n, m in model.named_modules()}
    inside = {id(c) for m in model.modules() if isinstance(m, nn.MultiheadAttention) for c in m.modules()}
    dg = dg if dg is not None else build_dependency_graph(model, example_input)
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    out: dict[str, list[str]] = {}
    for name, layer in layers.items():
        group = dg.get_pruning_group(layer, dg.get_pruner_of_module(layer).prune_out_channels, [0])
        writers = {name}
        for item in group:
            target = item.dep.target.module
            if (isinstance(target, (nn.Conv2d, nn.Linear)) and id(target) not in inside and id(target) in names
                    and dg.is_out_channel_pruning_fn(item.dep.handler)):
                writers.add(names[id(target)])
        out[name] = sorted(writers, key=order.__getitem__)
    return out


def tie_coupled_scores(scores: Mapping[str, Tensor], writers: Mapping[str, Sequence[str]]) -> dict[str, Tensor]:
    """Give every writer of a channel the channel's highest score among them, so they mask the same channels."""
    tied = dict(scores)
    for name, group in writers.items():
        present = [g for g in group if g in scores]
        if len(present) > 1:
            best = torch.stack([scores[g].double() for g in present]).amax(0)
            for g in present:
                tied[g] = best
    return tied


def mask_components(
    model: nn.Module, layers: Mapping[str, nn.Module], indices: Mapping[str, Tensor], example_input: Tensor,
    dg: tp.DependencyGraph | None = None,
) -> int:
    """Zero and hold at zero the given output components (in place, ``torch.nn.utils.prune.custom_from_mask``).

    Masks combine with earlier ones (a second call masks more). Pass ``dg`` (built on ``model`` before this call's
    masks) to save tracing the model again. Returns the number of weights masked.
    """
    enable_edit_reload(model)
    masked = 0
    if dg is None and any(len(i) for i in indices.values()):
        dg = build_dependency_graph(model, example_input)
    for name, idx in indices.items():
        if len(idx) == 0:
            continue
        for module, pname in component_parameters(model, layers[name], example_input, dg):
            p = getattr(module, pname)
            mask = torch.ones_like(p, dtype=p.dtype)
            mask[idx.to(p.device)] = 0
            if pname == "weight" and module is layers[name]:
                masked += int(p[0].numel() * len(idx))
            torch_prune.custom_from_mask(module, pname, mask)
    return masked


def default_unlearning_layers(model: nn.Module) -> list[str]:
    """The last third (rounded up) of the Conv2d/Linear layers, classifier excluded, in registration order.

    The paper edits the last stage / last blocks (Murti & Bhattacharyya 2024, Sec. 5). On a residual network
    masking early layers removes channels of the residual stream that every later class needs: on ResNet-20
    (option B, digits) masking 20% of every layer left remaining accuracy at 0.33. Examples: ResNet-20 ->
    the 7 convolutions of ``layer3``; VGG-11 -> its last 3 convolutions. In a transformer encoder
    (:class:`torch.nn.MultiheadAttention` or ViT-style attention) only FFN hidden neurons are candidates: the
    attention's own projections are skipped, and so is every Linear writing the residual stream (output width equal
    to the attention's), for the same reason as on ResNet.
    """
    names = list(prunable_layers(model, heads=False))
    mha = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    if mha:
        modules = dict(model.named_modules())
        inside = {id(c) for m in mha for c in m.modules()}
        stream = {m.embed_dim for m in mha}
        names = [n for n in names if id(modules[n]) not in inside
                 and not (isinstance(modules[n], nn.Linear) and modules[n].out_features in stream)]
    return names[len(names) - math.ceil(len(names) / 3):]


def maskable_layers(model: nn.Module, patterns: Sequence[str] | None = None) -> dict[str, nn.Module]:
    """The layers DISCEDIT-U masks: :func:`~lightning_edit.discedit.prunable_layers` without attention heads.

    Raises:
        ValueError: as :func:`~lightning_edit.discedit.prunable_layers`, and for a projection inside a
            :class:`torch.nn.MultiheadAttention` (its ``out_proj``), which the module computes with its own fused
            weights and cannot be masked as a layer (the message names it and what to choose instead).
    """
    layers = prunable_layers(model, patterns, heads=False)
    inside = {id(c): n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention) for c in m.modules()}
    bad = {n: inside[id(m)] for n, m in layers.items() if id(m) in inside}
    if bad:
        raise ValueError(
            f"Layer(s) {list(bad)} belong to nn.MultiheadAttention module(s) {sorted(set(bad.values()))}, which compute "
            "them with fused weights: they cannot be masked as layers. Choose the FFN layers (e.g. "
            "'*.linear1'), or layers='auto'.")
    return layers


def _output_module(model: nn.Module, layer: nn.Module, example_input: Tensor, dg: tp.DependencyGraph) -> nn.Module:
    """The module whose output is zero when the layer's components are masked: the BatchNorm it feeds, or itself."""
    for module, _ in component_parameters(model, layer, example_input, dg):
        if isinstance(module, _BatchNorm):
            return module
    return layer


@torch.no_grad()
def mask_until_forgotten(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    scores: Mapping[str, Tensor],
    batches: Sequence[tuple[Tensor, Tensor]],
    forget_classes: Sequence[int],
    example_input: Tensor,
    forget_target: float = DEFAULT_FORGET_TARGET,
    max_ratio: float = 0.5,
    scope: Literal["layer", "global"] = "layer",
    reduce_sum: Callable[[Tensor], Tensor] | None = None,
    recalibrate: bool = False,
    reduce_mean: Callable[[Tensor], Tensor] | None = None,
    dg: tp.DependencyGraph | None = None,
    head_inputs: list[tuple[Tensor, Tensor]] | None = None,
) -> tuple[dict[str, Tensor], float, float, float]:
    """The smallest masking ratio (on a 1% grid) at which the forget classes' accuracy on ``batches`` is ≤ ``forget_target``.

    The issue the paper leaves open is *how many* components to mask: a fixed ratio is too little for one class
    and wrecks the rest for another. The ranking is the scores' (highest first, per layer or global); the
    ratio is found by bisection, assuming the forget accuracy falls as more is masked (true of nested masks in
    practice, not guaranteed). Candidate masks are simulated by zeroing the masked channels at the output of
    the BatchNorm each layer feeds (the same function as the weight masks), so nothing is modified here.

    With ``recalibrate=True`` every candidate is measured after the BatchNorm running statistics are re-estimated
    on the first :data:`RECALIBRATION_BATCHES` of ``batches`` with the candidate mask in place (then restored). Without it, part of the forgetting measured on a
    BatchNorm network is an artefact of statistics that no longer match the masked network: re-estimating them (or a
    training epoch, which updates them) brought a forgotten class back from 0% to 87% accuracy on a residual CNN of
    digits. A mask found with ``recalibrate=True`` is one whose forgetting survives that.

    The search only needs the forget accuracy, so candidates are measured on the forget classes' samples alone (the
    statistics are still re-estimated on all of the first batches); the remaining accuracy is measured once, at the
    chosen ratio. The outputs of the modules that finish before the first masked site are the same for every
    candidate: they are recorded once and replayed (:class:`~lightning_edit.discedit.prefix.PrefixReplay`, within
    :data:`~lightning_edit.discedit.prefix.PREFIX_CACHE_BYTES`). On ResNet-20 with one forget class of ten, the
    search costs about a fifth of the forward passes of measuring every candidate on everything.

    Args:
        model: the classifier; evaluated in eval mode, not modified.
        layers, scores: layer name -> module / ``(C,)`` scores (high = mask first).
        batches: ``(x, y)`` calibration batches on the model's device, containing the forget classes.
        forget_classes: classes to forget. example_input: ``(1, ...)`` input to trace the model.
        forget_target: forget-class accuracy to reach, in [0, 1).
        max_ratio: the most that may be masked, in (0, 1).
        scope: ratio per layer or over all layers (:func:`select_components`).
        reduce_sum: sums counts across DDP ranks, so every rank picks the same ratio.
        recalibrate: measure each candidate with re-estimated BatchNorm statistics (see above).
        reduce_mean: averages the re-estimated statistics across DDP ranks.
        dg: torch-pruning dependency graph of ``model`` (built here when not given).
        head_inputs: a list that receives the classifier's inputs and the labels of ``batches`` at the chosen ratio
            (:func:`masked_accuracies`), which :func:`refit_forget_rows` reuses instead of another forward pass.

    Returns:
        ``(layer name -> indices to mask, ratio, forget accuracy, remaining accuracy)``, both accuracies on
        ``batches`` at that ratio (micro averages); if ``max_ratio`` does not reach the target, the masks at
        ``max_ratio`` (the caller reports the miss).
    """
    dg = dg if dg is not None else build_dependency_graph(model, example_input)
    outputs = {name: _output_module(model, layer, example_input, dg) for name, layer in layers.items()}
    grid = [i / 100 for i in range(1, int(round(max_ratio * 100)) + 1)] or [max_ratio]
    forget = torch.tensor(list(forget_classes))
    forget_batches = [(x[keep], y[keep]) for x, y in batches if (keep := torch.isin(y, forget.to(y.device))).any()]
    statistics_inputs = [x for x, _ in batches[:RECALIBRATION_BATCHES]]
    prefix = record_prefix(model, [*layers.values(), *outputs.values()], example_input, statistics_inputs,
                           [x for x, _ in forget_batches], recalibrate, reduce_mean)
    cache: dict[int, float] = {}

    def measure(i: int, on: Sequence[tuple[Tensor, Tensor]], replay: PrefixReplay | None = None) -> tuple[float, float]:
        return masked_accuracies(model, outputs, select_components(scores, grid[i], scope), on, forget_classes,
                                 reduce_sum, recalibrate, reduce_mean, statistics_inputs, replay)

    def forget_accuracy(i: int) -> float:
        if i not in cache:
            cache[i] = measure(i, forget_batches, prefix)[0]
        return cache[i]

    lo, hi = 0, len(grid) - 1
    if forget_accuracy(hi) > forget_target:
        lo = hi
    while lo < hi:
        mid = (lo + hi) // 2
        if forget_accuracy(mid) <= forget_target:
            hi = mid
        else:
            lo = mid + 1
    final = masked_accuracies(model, outputs, select_components(scores, grid[lo], scope), batches, forget_classes,
                              reduce_sum, recalibrate, reduce_mean, statistics_inputs, head_inputs=head_inputs)
    return select_components(scores, grid[lo], scope), grid[lo], *final


def _batchnorm_state(model: nn.Module) -> list[tuple[_BatchNorm, Tensor, Tensor, Tensor]]:
    return [(bn, bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
            for bn in batchnorm_layers(model)]


def _restore_batchnorm(state: Sequence[tuple[_BatchNorm, Tensor, Tensor, Tensor]]) -> None:
    for bn, mean, var, n in state:
        bn.running_mean.copy_(mean), bn.running_var.copy_(var), bn.num_batches_tracked.copy_(n)


@torch.no_grad()
def record_prefix(
    model: nn.Module,
    sites: Sequence[nn.Module],
    example_input: Tensor,
    statistics_inputs: Sequence[Tensor],
    evaluation_inputs: Sequence[Tensor],
    recalibrate: bool,
    reduce_mean: Callable[[Tensor], Tensor] | None = None,
) -> PrefixReplay:
    """Record the outputs of the modules before ``sites`` for :func:`masked_accuracies`' two phases: the BatchNorm
    re-estimation on ``statistics_inputs`` (train mode, with ``recalibrate``) and the eval-mode measurement on
    ``evaluation_inputs``, the latter under the re-estimated statistics, as every candidate sees them. The model's
    statistics and mode are restored.

    Args:
        model, sites, example_input: as :class:`~lightning_edit.discedit.prefix.PrefixReplay`.
        statistics_inputs, evaluation_inputs: ``(N, ...)`` input batches on the model's device, in the order
            :func:`masked_accuracies` will run them.
        recalibrate, reduce_mean: as :func:`mask_until_forgotten`.

    Returns:
        the replay (inactive when no module precedes the sites or the outputs exceed its memory limit).
    """
    prefix = PrefixReplay(model, sites, example_input)
    if not prefix.active:
        return prefix
    state = _batchnorm_state(model) if recalibrate else []
    was_training = model.training
    try:
        if state:
            with prefix.record("statistics"):
                recalibrate_batchnorm(model, statistics_inputs, RECALIBRATION_BATCHES, reduce_mean=reduce_mean)
        model.eval()
        with prefix.record("evaluation"):
            for x in evaluation_inputs:
                model(x)
    finally:
        model.train(was_training)
        _restore_batchnorm(state)
    return prefix


@torch.no_grad()
def masked_accuracies(
    model: nn.Module,
    outputs: Mapping[str, nn.Module],
    picked: Mapping[str, Tensor],
    batches: Sequence[tuple[Tensor, Tensor]],
    forget_classes: Sequence[int],
    reduce_sum: Callable[[Tensor], Tensor] | None = None,
    recalibrate: bool = False,
    reduce_mean: Callable[[Tensor], Tensor] | None = None,
    statistics_inputs: Sequence[Tensor] | None = None,
    prefix: PrefixReplay | None = None,
    head_inputs: list[tuple[Tensor, Tensor]] | None = None,
) -> tuple[float, float]:
    """Forget- and remaining-class accuracy on ``batches`` with channels zeroed at ``outputs`` (nothing kept).

    ``outputs``: layer name -> the module whose output channels ``picked[name]`` are zeroed (the BatchNorm a layer
    feeds, or the layer). With ``recalibrate``, BatchNorm statistics are re-estimated under the mask first, on
    ``statistics_inputs`` (default: the inputs of the first :data:`RECALIBRATION_BATCHES` of ``batches``), and put
    back afterwards. ``prefix``: outputs recorded by :func:`record_prefix` on exactly these statistics inputs and
    ``batches``, replayed instead of computed. ``head_inputs``: a list that receives ``(classifier input (n, D),
    y (n,))`` per batch, as the masked model's classifier sees them (for :func:`refit_forget_rows`). Returns micro averages, summed across DDP ranks by ``reduce_sum``; a
    class group with no sample (on every rank) has accuracy 0.
    """
    forget = torch.tensor(list(forget_classes))
    handles = []
    for name, idx in picked.items():
        def hook(module, args, out, idx=idx, last=isinstance(outputs[name], nn.Linear)):
            out = out.clone()  # channels: dim 1 of (N, C, ...), the last dim of a Linear's (N, ..., C)
            if last:
                out[..., idx.to(out.device)] = 0
            else:
                out[:, idx.to(out.device)] = 0
            return out
        handles.append(outputs[name].register_forward_hook(hook))
    saved = _batchnorm_state(model) if recalibrate else []
    replay = prefix.replay if prefix is not None else (lambda _phase: contextlib.nullcontext())
    was_training = model.training
    try:
        if saved:
            inputs = statistics_inputs if statistics_inputs is not None else [x for x, _ in batches]
            with replay("statistics"):
                recalibrate_batchnorm(model, inputs, RECALIBRATION_BATCHES, reduce_mean=reduce_mean)
        model.eval()
        counts = torch.zeros(4, dtype=torch.float64, device=next(model.parameters()).device)
        if head_inputs is not None:
            seen: list[Tensor] = []
            handles.append(output_layer(model)[1].register_forward_pre_hook(lambda m, args: seen.append(args[0].detach())))
        with replay("evaluation"):
            for x, y in batches:
                if head_inputs is not None:
                    seen.clear()
                is_forget = torch.isin(y, forget.to(y.device))
                right = model(x).argmax(-1) == y
                if head_inputs is not None:
                    head_inputs.append((seen[-1], y))
                counts += torch.stack([(right & is_forget).sum(), is_forget.sum(), (right & ~is_forget).sum(),
                                       (~is_forget).sum()]).to(counts)
        if reduce_sum is not None:
            counts = reduce_sum(counts)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
        _restore_batchnorm(saved)
    return float(counts[0] / counts[1].clamp_min(1)), float(counts[2] / counts[3].clamp_min(1))


def resolve_masking(
    ratio: float | str | None, std_threshold: float | None, forget_target: float | None, max_ratio: float | None,
    scope: str = "layer",
) -> tuple[float | None, float | None, float | None]:
    """Check the masking arguments; returns ``(fixed ratio or None, forget_target, max_ratio)`` (auto when ratio is None).

    Raises:
        ValueError: a ratio that is neither ``"auto"`` nor in (0, 1); ``forget_target``/``max_ratio`` given with a
            fixed ratio or ``std_threshold``, a fixed ratio or ``scope="global"`` given with ``std_threshold``
            (they would do nothing); a target outside [0, 1) or a max ratio outside (0, 1).
    """
    if std_threshold is not None and (ratio != "auto" or scope != "layer"):
        raise ValueError(f"std_threshold={std_threshold} sets how many components each layer masks by itself, so "
                         f"ratio={ratio!r} and scope={scope!r} would not be read; keep ratio='auto' and scope='layer', "
                         "or drop std_threshold.")
    auto = ratio == "auto" and std_threshold is None
    if not auto and (forget_target is not None or max_ratio is not None):
        raise ValueError("forget_target and max_ratio only apply to ratio='auto' (without std_threshold); "
                         f"got ratio={ratio!r}, std_threshold={std_threshold}. Drop them or set ratio='auto'.")
    if std_threshold is not None:
        return None, None, None
    if not auto:
        if isinstance(ratio, str) or ratio is None or not 0.0 < ratio < 1.0:
            raise ValueError(f"masking ratio must be 'auto' or in (0, 1), got {ratio!r}.")
        return float(ratio), None, None
    forget_target = DEFAULT_FORGET_TARGET if forget_target is None else forget_target
    max_ratio = 0.5 if max_ratio is None else max_ratio
    if not 0.0 <= forget_target < 1.0 or not 0.0 < max_ratio < 1.0:
        raise ValueError(f"Need 0 <= forget_target < 1 and 0 < max_ratio < 1, got {forget_target}, {max_ratio}.")
    return None, forget_target, max_ratio


@dataclass
class UnlearnReport:
    """What :func:`unlearn` did.

    Attributes:
        forget_classes: the classes forgotten.
        masked: layer name -> masked component indices.
        scores: layer name -> ``(C,)`` scores used.
        masked_weights: number of conv/linear weights zeroed.
        total_weights: number of conv/linear weights in the scored layers.
        ratio: the masking ratio used (found by the search with ``ratio="auto"``; None with ``std_threshold``).
        calibration_forget_accuracy: forget-class accuracy on the calibration data at that ratio (``"auto"`` only), with
            the masks alone (before the classifier-row re-fit).
        calibration_remaining_accuracy: remaining-class accuracy on the calibration data at that ratio (``"auto"``),
            with the masks alone.
        refit_steps: steps of :func:`refit_forget_rows` taken after masking (0: none, also when the masks alone left the
            class above the forget target).
    """

    forget_classes: list[int]
    masked: dict[str, list[int]] = field(default_factory=dict)
    scores: dict[str, Tensor] = field(default_factory=dict)
    masked_weights: int = 0
    total_weights: int = 0
    ratio: float | None = None
    calibration_forget_accuracy: float | None = None
    calibration_remaining_accuracy: float | None = None
    refit_steps: int = 0

    @property
    def fraction_masked(self) -> float:
        """Fraction of the scored layers' weights that are masked (the paper's Table 1 "weights masked")."""
        return self.masked_weights / max(1, self.total_weights)


def unlearning_component_scores(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    forget_classes: Sequence[int],
    importance: Literal["discedit", "l1", "random"] = "discedit",
    batches: Iterable[tuple[Tensor, Tensor]] | None = None,
    num_classes: int | None = None,
    witness: str = "fisher",
    reduce_sum: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Per-component scores for forgetting ``forget_classes`` (high = mask first).

    ``"discedit"``: ``max over forget classes c of TV-bound(P_c, Q_c)``; ``"l1"``: filter L1 norm;
    ``"random"``: uniform (the baselines mask the same number of components).

    Raises:
        ValueError: if a forget class has no sample in the calibration data, or for a ``witness`` other than
            ``"fisher"`` with another importance (it would not be read); nothing is modified.
    """
    check_discedit_options(importance, witness=(witness, "fisher"))

    def check_counts(counts: Tensor) -> None:
        absent = [c for c in forget_classes if counts[c] == 0]
        if absent:
            raise ValueError(
                f"The calibration data has no sample of forget class(es) {absent}; DISCEDIT-U needs examples of the "
                "class to forget (raise calibration_batches or use a loader that contains it)."
            )

    def score(m, w) -> Tensor:
        return torch.stack([unlearning_scores(m, c, w) for c in forget_classes]).amax(0)

    return score_components(
        model, layers, importance, score, batches, num_classes, witness, reduce_sum, generator, check_counts
    )


def unlearn(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    forget_classes: Sequence[int],
    num_classes: int | None = None,
    ratio: float | Literal["auto"] = "auto",
    witness: str = "fisher",
    layers: Sequence[str] | Literal["auto"] | None = "auto",
    scope: Literal["layer", "global"] = "layer",
    std_threshold: float | None = None,
    importance: Literal["discedit", "l1", "random"] = "discedit",
    inplace: bool = False,
    seed: int = 0,
    recalibration_batches: Iterable[Any] | None = None,
    forget_target: float | None = None,
    max_ratio: float | None = None,
    recalibrate: bool = True,
    coupled: bool = True,
    refit_steps: int | None = None,
) -> tuple[nn.Module, UnlearnReport]:
    """Make ``model`` forget ``forget_classes`` without a Trainer (DISCEDIT-U, no fine-tuning).

    Args:
        model: a classifier ``(N, ...) -> (N, K)``.
        batches: calibration ``(x, y)`` pairs (``y`` class indices) on the model's device; must contain
            the forget classes and others.
        forget_classes: class indices to forget.
        num_classes: K (default: the model's output width).
        ratio: ``"auto"``: the smallest ratio (1% grid, at most ``max_ratio``, default 0.5) at which the forget
            classes' accuracy on the calibration data is at most ``forget_target`` (default 0.02, :data:`DEFAULT_FORGET_TARGET`;
            :func:`mask_until_forgotten`); a number in (0, 1): that fixed fraction (:func:`select_components`).
        scope, std_threshold: see :func:`select_components`.
        witness: witness name (see :data:`lightning_edit.discedit.WITNESS_FUNCTIONS`).
        layers: ``fnmatch`` patterns of layers to edit; ``"auto"``: the last third of the layers
            (:func:`default_unlearning_layers`); None: every Conv2d/Linear except the classifier.
        importance: ``"discedit"`` or a baseline (``"l1"``, ``"random"``) masking the same number of components.
        inplace: edit ``model`` itself; by default a deep copy is edited and ``model`` is untouched.
        seed: seed of the random baseline.
        recalibration_batches: ``(x, y)`` batches on which the BatchNorm running statistics of the edited model
            are re-estimated after masking (:func:`~lightning_edit.discedit.recalibrate_batchnorm`); default: the
            first :data:`RECALIBRATION_BATCHES` calibration batches, as in the search (with ``recalibrate=True``).
        recalibrate: re-estimate BatchNorm statistics under each candidate mask during the ratio search and after
            masking (default). The forgetting then comes from the masked features, not from statistics that no
            longer match the network, and lasts through training epochs that update them
            (:func:`mask_until_forgotten`). False: the paper's procedure (statistics left as they were).
        coupled: mask a channel in every layer that writes it (:func:`coupled_writers`: the writers of a residual
            stream, scored by their highest score), so the channel leaves the stream. False: each layer picks its
            own channels (the paper's per-layer rule); on a residual network that masks block outputs that the
            identity shortcuts bypass.
        refit_steps: after masking, re-fit the forget classes' classifier rows for this many steps on the
            calibration batches' remaining-class samples (:func:`refit_forget_rows`); default
            :data:`DEFAULT_REFIT_STEPS`; 0: the rows are left as trained. Only when the masks alone bring the forget
            classes' calibration accuracy to ``forget_target`` (with a fixed ratio: :data:`DEFAULT_FORGET_TARGET`) or
            below; otherwise the rows are left as trained (``report.refit_steps`` is 0; a warning if ``refit_steps``
            was given).

    Returns:
        ``(edited_model, report)``.

    Raises:
        ValueError: for forget classes outside the outputs or covering all of them, a forget class absent
            from ``batches``, a ratio that is neither ``"auto"`` nor in (0, 1), ``forget_target``/``max_ratio``
            with a fixed ratio, a fixed ratio or ``scope="global"`` with ``std_threshold``, a ``witness`` other than
            ``"fisher"`` with another importance, a ``seed`` other than 0 with an importance other than
            ``"random"``, no layer matching ``layers``, a negative ``refit_steps``, or an explicit ``refit_steps > 0`` with a
            classifier that is not a Linear seeing one input per sample (at the default the re-fit is skipped there).
    """
    ratio_used, forget_target, max_ratio = resolve_masking(ratio, std_threshold, forget_target, max_ratio, scope)
    check_random_seed(importance, seed)
    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        raise ValueError("unlearn() got no calibration batch.")
    edited = model if inplace else copy.deepcopy(model)
    example = first[0][:1]
    if num_classes is None:
        was_training = edited.training
        edited.eval()
        with torch.no_grad():
            num_classes = edited(example).shape[-1]
        edited.train(was_training)
    classes = check_forget_classes(forget_classes, num_classes)
    asked_refit = refit_steps is not None
    refit_steps = check_refit_steps(refit_steps, edited, example)
    chosen = maskable_layers(edited, default_unlearning_layers(edited) if layers == "auto" else layers)
    calibration = [first, *batches]
    dg = build_dependency_graph(edited, example)  # traced once: coupling, the search's output sites and the masks
    writers = coupled_writers(edited, chosen, example, dg) if coupled else {}
    if coupled:
        chosen = expand_coupled(edited, chosen, writers)
    scores = unlearning_component_scores(
        edited, chosen, classes, importance, calibration, num_classes, witness,
        generator=torch.Generator().manual_seed(seed),
    )
    if coupled:
        scores = tie_coupled_scores(scores, writers)
    calibration_forget_accuracy = calibration_remaining_accuracy = None
    head_inputs: list[tuple[Tensor, Tensor]] | None = None
    if forget_target is not None:
        head_inputs = [] if refit_steps and recalibration_batches is None else None  # the final model's, recorded
        picked, ratio_used, calibration_forget_accuracy, calibration_remaining_accuracy = mask_until_forgotten(
            edited, chosen, scores, calibration, classes, example, forget_target, max_ratio, scope,
            recalibrate=recalibrate, dg=dg, head_inputs=head_inputs)
    else:
        picked = select_components(scores, ratio_used, scope, std_threshold)
    masked = mask_components(edited, chosen, picked, example, dg)
    if recalibration_batches is not None or recalibrate:
        if recalibration_batches is not None:
            recalibrate_batchnorm(edited, recalibration_batches)
        else:
            recalibrate_batchnorm(edited, [b[0] for b in calibration], RECALIBRATION_BATCHES)
    ceiling = forget_target if forget_target is not None else DEFAULT_FORGET_TARGET
    if refit_steps and not refit_forget_rows(edited, calibration, classes, refit_steps, head_inputs=head_inputs,
                                             max_forget_accuracy=ceiling):
        if asked_refit:
            warnings.warn(refit_skipped_message(classes, ceiling), stacklevel=2)
        refit_steps = 0
    total = sum(math.prod(getattr(m, "weight_orig", m.weight).shape) for m in chosen.values())
    report = UnlearnReport(classes, {n: i.tolist() for n, i in picked.items()}, scores, masked, total, ratio_used,
                           calibration_forget_accuracy, calibration_remaining_accuracy, refit_steps)
    return edited, report


DEFAULT_REFIT_STEPS = 50
"""Default steps of :func:`refit_forget_rows` after masking (``unlearn(refit_steps=...)``). Chosen on held-out
networks (seeds 3 and up; the evaluation tables use 0-2), validation split, as the fewest steps at which relearning
the class takes at least as long as after retraining, averaged over ResNet-20, VGG-11 ¼ and a residual CNN of digits
(``benchmarks/unlearning_row_refit.py``): relearn ÷ retrain 0.94, 0.93 and 1.21 at 50 steps (0.48, 0.59 and 0.70
without the re-fit; 1.17, 1.15 and 1.53 at 100)."""
REFIT_LR = 1e-3
"""Adam step size of :func:`refit_forget_rows` (the benchmarks' fine-tuning rate)."""


def check_refit_steps(refit_steps: int | None, model: nn.Module | None = None, example_input: Tensor | None = None
                      ) -> int:
    """``refit_steps`` resolved (None: :data:`DEFAULT_REFIT_STEPS`) and checked before anything changes.

    With ``model`` (and ``example_input``, ``(1, ...)``), a re-fit also needs a Linear classifier that sees one input
    per sample (:func:`refit_forget_rows`). At the default (None) a model without one gets 0 steps; an explicit number
    is an error.

    Raises:
        ValueError: for a negative or non-integer number, or an explicit ``refit_steps > 0`` with a ``model`` whose last
            layer is not a Linear classifier or sees more than one input per sample.
    """
    steps = DEFAULT_REFIT_STEPS if refit_steps is None else refit_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"refit_steps must be an integer >= 0 (0: leave the classifier rows as trained), got {refit_steps!r}.")
    obstacle = _refit_obstacle(model, example_input) if steps and model is not None else None
    if obstacle is None:
        return steps
    if refit_steps is None:
        return 0
    raise ValueError(f"{obstacle} Pass refit_steps=0 to unlearn without re-fitting the classifier rows.")


def _refit_obstacle(model: nn.Module, example_input: Tensor | None) -> str | None:
    """Why ``model``'s classifier rows cannot be re-fitted (no Linear last layer, or not one ``(D,)`` input per
    sample of ``example_input``), or None. Only the last-layer lookup's error is caught: the model's own errors
    propagate."""
    try:
        _, head = output_layer(model)
    except ValueError as err:
        return str(err)
    if example_input is None:
        return None
    shape = _classifier_inputs(model, head, [(example_input, torch.zeros(len(example_input)))])[0][0].shape
    if len(shape) != 2 or shape[0] != len(example_input):
        return (f"The classifier {type(head).__name__} sees inputs of shape {tuple(shape)} for {len(example_input)} "
                "sample(s); re-fitting its rows needs one (D,) input per sample.")
    return None


def refit_skipped_message(forget_classes: Sequence[int], ceiling: float) -> str:
    return (f"The masks leave forget class(es) {list(forget_classes)} above accuracy {ceiling} on the calibration data, "
            "so their classifier rows were not re-fitted: that would hide the class at the output instead of removing "
            "it from the features. Mask more (raise max_ratio or the ratio, or edit more layers).")


def refit_forget_rows(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]] | None,
    forget_classes: Sequence[int],
    steps: int,
    lr: float = REFIT_LR,
    reduce_mean: Callable[[Tensor], Tensor] | None = None,
    head_inputs: Sequence[tuple[Tensor, Tensor]] | None = None,
    max_forget_accuracy: float | None = None,
    reduce_sum: Callable[[Tensor], Tensor] | None = None,
) -> int:
    """Re-fit the classifier rows of ``forget_classes`` as a model that never saw them would have them; in place.

    A network retrained without class c never receives a positive example of c: the only gradient its classifier row
    c gets is the push-down of the other classes' samples. After masking, the masked network's row c still points at
    the class evidence it was trained on, and a few fine-tuning steps on forget samples re-align what survives in the
    unmasked features with it (a short relearn time). This gives row c (weights and bias) ``steps`` full-batch Adam
    steps at ``lr`` on the cross-entropy of the remaining-class samples of ``batches``, computed on the classifier's
    inputs (the model in eval mode, every other parameter fixed): the retrained model's gradient, nothing else. The
    features are left as the masking made them; the forgetting itself comes from the masks. Our addition to
    DISCEDIT-U (not in Murti & Bhattacharyya 2024); the default number of steps was chosen on held-out networks
    (``benchmarks/unlearning_row_refit.py``).

    Args:
        model: the classifier ``(N, ...) -> (N, K)``; its classifier is the last Conv2d/Linear, a Linear
            (:func:`~lightning_edit.discedit.output_layer`) that sees one ``(D,)`` input per sample.
        batches: ``(x, y)`` batches on the model's device (``y`` class indices); their remaining-class samples are
            used. Not read when ``head_inputs`` is given.
        forget_classes: the rows to re-fit.
        steps: Adam steps (0: nothing changes).
        lr: Adam step size.
        reduce_mean: averages a gradient across processes (DDP), so that every rank takes the same steps.
        head_inputs: ``(classifier input (n, D), y (n,))`` pairs the masked model's classifier already saw
            (:func:`mask_until_forgotten` records them at the chosen ratio), instead of a forward pass over
            ``batches``.
        max_forget_accuracy: re-fit only if the model as it is classifies at most this share of the forget classes'
            samples in ``batches`` correctly (counts summed across ranks by ``reduce_sum``). Where the masks leave the
            class in the features, re-fitting its row would hide the class at the output instead of removing it;
            then nothing changes.

    Returns:
        the number of remaining-class samples used (on this rank); 0 when nothing was re-fitted.

    Raises:
        ValueError: for ``steps < 0``, ``lr <= 0``, a last layer that is not a Linear, a classifier that sees more
            than one input per sample, or no remaining-class sample; nothing is modified.
    """
    if steps < 0 or lr <= 0:
        raise ValueError(f"Need refit steps >= 0 and lr > 0, got steps={steps}, lr={lr}.")
    _, head = output_layer(model)
    if steps == 0:
        return 0
    if head_inputs is None:
        head_inputs = _classifier_inputs(model, head, batches)
    h = torch.cat([f.detach().float() for f, _ in head_inputs])
    y = torch.cat([t.reshape(-1) for _, t in head_inputs]).to(h.device)
    if h.ndim != 2 or len(h) != len(y):
        raise ValueError(f"refit_forget_rows: the classifier sees inputs of shape {tuple(h.shape)} for {len(y)} "
                         "samples; it needs one (D,) input per sample. Pass refit_steps=0.")
    forget = torch.tensor(sorted(set(int(c) for c in forget_classes)), device=h.device)
    keep = ~torch.isin(y, forget)
    if not bool(keep.any()):
        raise ValueError("refit_forget_rows: the batches hold no remaining-class sample; give batches with other classes.")
    weight = getattr(head, "weight_orig", head.weight)
    w_all = weight.detach().float()
    b_all = None if head.bias is None else head.bias.detach().float()
    mask = getattr(head, "weight_mask", None)  # torch.nn.utils.prune's, if the classifier carries one
    if max_forget_accuracy is not None:
        with torch.no_grad():
            logits = h[~keep] @ (w_all if mask is None else w_all * mask.float()).T
            right = ((logits if b_all is None else logits + b_all).argmax(-1) == y[~keep]).sum()
        counts = torch.stack([right, (~keep).sum()]).double()
        counts = reduce_sum(counts) if reduce_sum is not None else counts
        if float(counts[0]) > max_forget_accuracy * float(counts[1]):
            return 0
    h, y = h[keep], y[keep]
    w_rows = w_all[forget].clone().requires_grad_(True)
    params = [w_rows]
    if b_all is not None:
        b_rows = b_all[forget].clone().requires_grad_(True)
        params.append(b_rows)
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        w = w_all.index_put((forget,), w_rows if mask is None else w_rows * mask[forget].float())
        logits = h @ w.T if b_all is None else h @ w.T + b_all.index_put((forget,), b_rows)
        loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        if reduce_mean is not None:
            for p in params:
                p.grad = reduce_mean(p.grad)
        opt.step()
    with torch.no_grad():
        weight[forget] = w_rows.to(weight.dtype)
        if b_all is not None:
            head.bias[forget] = b_rows.to(head.bias.dtype)
    return len(y)


@torch.no_grad()
def _classifier_inputs(model: nn.Module, head: nn.Module, batches: Iterable[tuple[Tensor, Tensor]] | None
                       ) -> list[tuple[Tensor, Tensor]]:
    """``(classifier input, y)`` per batch of ``batches``, the model in eval mode (its mode is restored)."""
    if batches is None:
        raise ValueError("refit_forget_rows needs batches or head_inputs.")
    seen: list[Tensor] = []
    pairs = []
    handle = head.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    was_training = model.training
    model.eval()
    try:
        for x, y in batches:
            seen.clear()
            model(x)
            pairs.append((seen[-1], y))
    finally:
        handle.remove()
        model.train(was_training)
    return pairs


def expand_coupled(model: nn.Module, layers: Mapping[str, nn.Module], writers: Mapping[str, Sequence[str]]
                   ) -> dict[str, nn.Module]:
    """``layers`` plus every layer writing the same channels (``writers``: :func:`coupled_writers` of ``layers``),
    in registration order. The groups of ``writers`` cover the added layers too, so the same ``writers`` serve
    :func:`tie_coupled_scores` on the expanded layers."""
    modules = dict(model.named_modules())
    names = {n for group in writers.values() for n in group} | set(layers)
    return {n: modules[n] for n in modules if n in names}


def forget_retain_accuracy(per_class_accuracy: Tensor, forget_classes: Sequence[int]) -> tuple[float, float]:
    """Mean accuracy over the forget classes and over the remaining classes (macro averages).

    Args:
        per_class_accuracy: ``(K,)`` accuracies in [0, 1].

    Returns:
        ``(forget_accuracy, remaining_accuracy)``. The paper's FA is the drop of the first, RA the drop of the
        second, between the original and the edited model.
    """
    acc = per_class_accuracy.detach().double().cpu()
    forget = torch.zeros(len(acc), dtype=torch.bool)
    forget[list(forget_classes)] = True
    return float(acc[forget].nanmean()), float(acc[~forget].nanmean())
