"""DISCEDIT-U: class unlearning by masking the components most discriminative for the forget class.

Murti & Bhattacharyya, NeurIPS 2024, Sec. 4 (DISCEDIT-U); METHODS.md Sec. 1 "Scores" and
"Algorithms". Component j of a layer scores ``r_j = TV-bound(P_c, Q_c)`` (class c against the
rest); the highest-scored components are masked: their filter / neuron weights and bias and the
BatchNorm that follows are multiplied by a zero mask (``torch.nn.utils.prune``), so the
architecture is kept, the masked values stay zero through fine-tuning, and the masks are part of
the state dict.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import prune as torch_prune

from lightning_edit.discedit.recalibrate import recalibrate_batchnorm
from lightning_edit.discedit.scores import score_components, unlearning_scores
from lightning_edit.discedit.structured import build_dependency_graph, enable_edit_reload, prunable_layers


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


def component_parameters(model: nn.Module, layer: nn.Module, example_input: Tensor) -> list[tuple[nn.Module, str]]:
    """The parameters of one layer's output components: its ``weight``/``bias`` and those of the BatchNorm it feeds.

    The BatchNorm is found with torch-pruning's dependency graph (the norm layer whose out-channel
    dependency has this layer as its source), so it works for Sequential, ResNet and custom forwards.
    """
    params = [(layer, "weight")] + ([(layer, "bias")] if getattr(layer, "bias", None) is not None else [])
    dg = build_dependency_graph(model, example_input)
    group = dg.get_pruning_group(layer, dg.get_pruner_of_module(layer).prune_out_channels, [0])
    for item in group:
        target = item.dep.target.module
        if isinstance(target, _BatchNorm) and item.dep.source.module is layer and target.affine:
            params += [(target, "weight"), (target, "bias")]
    return params


def mask_components(
    model: nn.Module, layers: Mapping[str, nn.Module], indices: Mapping[str, Tensor], example_input: Tensor
) -> int:
    """Zero and hold at zero the given output components (in place, ``torch.nn.utils.prune.custom_from_mask``).

    Masks combine with earlier ones (a second call masks more). Returns the number of weights masked.
    """
    enable_edit_reload(model)
    masked = 0
    for name, idx in indices.items():
        if len(idx) == 0:
            continue
        for module, pname in component_parameters(model, layers[name], example_input):
            p = getattr(module, pname)
            mask = torch.ones_like(p, dtype=p.dtype)
            mask[idx.to(p.device)] = 0
            if pname == "weight" and module is layers[name]:
                masked += int(p[0].numel() * len(idx))
            torch_prune.custom_from_mask(module, pname, mask)
    return masked


@dataclass
class UnlearnReport:
    """What :func:`unlearn` did.

    Attributes:
        forget_classes: the classes forgotten.
        masked: layer name -> masked component indices.
        scores: layer name -> ``(C,)`` scores used.
        masked_weights: number of conv/linear weights zeroed.
        total_weights: number of conv/linear weights in the scored layers.
    """

    forget_classes: list[int]
    masked: dict[str, list[int]] = field(default_factory=dict)
    scores: dict[str, Tensor] = field(default_factory=dict)
    masked_weights: int = 0
    total_weights: int = 0

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
        ValueError: if a forget class has no sample in the calibration data (nothing is modified).
    """
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
    ratio: float | None = 0.1,
    witness: str = "fisher",
    layers: Sequence[str] | None = None,
    scope: Literal["layer", "global"] = "layer",
    std_threshold: float | None = None,
    importance: Literal["discedit", "l1", "random"] = "discedit",
    inplace: bool = False,
    seed: int = 0,
    recalibration_batches: Iterable[Any] | None = None,
) -> tuple[nn.Module, UnlearnReport]:
    """Make ``model`` forget ``forget_classes`` without a Trainer (DISCEDIT-U, no fine-tuning).

    Args:
        model: a classifier ``(N, ...) -> (N, K)``.
        batches: calibration ``(x, y)`` pairs (``y`` class indices) on the model's device; must contain
            the forget classes and others.
        forget_classes: class indices to forget.
        num_classes: K (default: the model's output width).
        ratio, scope, std_threshold: see :func:`select_components`.
        witness: witness name (see :data:`lightning_edit.discedit.WITNESS_FUNCTIONS`).
        layers: ``fnmatch`` patterns of layers to edit (default every Conv2d/Linear except the classifier).
        importance: ``"discedit"`` or a baseline (``"l1"``, ``"random"``) masking the same number of components.
        inplace: edit ``model`` itself; by default a deep copy is edited and ``model`` is untouched.
        seed: seed of the random baseline.
        recalibration_batches: if given, ``(x, y)`` batches on which the BatchNorm running statistics of the
            edited model are re-estimated after masking (:func:`~lightning_edit.discedit.recalibrate_batchnorm`).

    Returns:
        ``(edited_model, report)``.

    Raises:
        ValueError: for forget classes outside the outputs or covering all of them, a forget class absent
            from ``batches``, a ratio outside (0, 1), or no layer matching ``layers``.
    """
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
    if std_threshold is None and (ratio is None or not 0.0 < ratio < 1.0):
        raise ValueError(f"masking ratio must be in (0, 1), got {ratio}.")
    chosen = prunable_layers(edited, layers)
    scores = unlearning_component_scores(
        edited, chosen, classes, importance, itertools.chain([first], batches), num_classes, witness,
        generator=torch.Generator().manual_seed(seed),
    )
    picked = select_components(scores, ratio, scope, std_threshold)
    masked = mask_components(edited, chosen, picked, example)
    if recalibration_batches is not None:
        recalibrate_batchnorm(edited, recalibration_batches)
    total = sum(math.prod(getattr(m, "weight_orig", m.weight).shape) for m in chosen.values())
    report = UnlearnReport(classes, {n: i.tolist() for n, i in picked.items()}, scores, masked, total)
    return edited, report


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
