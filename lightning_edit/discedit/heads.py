"""Whole attention heads as prunable components of ViT-style attention (fused ``qkv``, ``num_heads``).

**What DISCEDIT scores for a head** (our definition; the paper scores conv channels and neurons only). A head ``h``
writes ``head_dim`` coordinates of the attention output that ``proj`` reads. Each coordinate, averaged over tokens, is
a component feature exactly like a neuron's (``[s, s²]`` for the fisher witness), and gets the paper's score
``min_c TV-bound(P_c, Q_c)``. A head's score is the **maximum** over its coordinates: a head is non-discriminative
only if none of its outputs separates the classes, the rule :func:`~lightning_edit.discedit.structured.group_scores`
uses for channels coupled by a residual stream. The feature site is the attention output for both ``site`` values
(there is no BatchNorm or ReLU after it).

The other criteria score ``proj``'s input coordinates through torch-pruning (the group couples them with ``qkv``'s
q, k and v rows) and average them per head, torch-pruning's own head rule; ``"l1"`` sums the absolute weights of the
head's ``qkv`` rows and ``proj`` columns; ``"random"`` is uniform.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from lightning_edit.discedit.moments import ClassConditionalMoments, check_targets, component_features
from lightning_edit.discedit.scores import Witness, check_finite, pruning_scores, random_scores
from lightning_edit.discedit.structured import head_dim


@torch.no_grad()
def discedit_head_scores(
    model: nn.Module, heads: Mapping[str, nn.Module], batches: Iterable[tuple[Tensor, Tensor]], num_classes: int,
    witness: Witness, reduce_sum: Callable[[Tensor], Tensor] | None = None, class_reduction: str = "min",
) -> dict[str, Tensor]:
    """DISCEDIT score of every head (module docstring): one eval-mode pass over ``batches`` of ``(x, y)``.

    Returns:
        attention module name -> ``(num_heads,)`` float64 (low = remove first).

    Raises:
        ValueError: for empty ``batches`` or non-finite statistics.
    """
    moments: dict[str, ClassConditionalMoments] = {}
    targets: list[Tensor] = []

    def hook(name: str):
        def record(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            z = component_features(inputs[0], witness.feature)  # (N, H·head_dim, d)
            if name not in moments:
                moments[name] = ClassConditionalMoments.zeros(num_classes, z.shape[1], z.shape[2], z.device)
            moments[name].update(z, targets[0].to(z.device))
        return record

    handles = [m.proj.register_forward_pre_hook(hook(n)) for n, m in heads.items()]
    was_training = model.training
    model.eval()
    try:
        for x, y in batches:
            check_targets(y)
            targets[:] = [y]
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if len(moments) != len(heads):
        raise ValueError("No calibration batch reached the attention modules; is the calibration loader empty?")
    scores = {}
    for name, m in moments.items():
        if reduce_sum is not None:
            m.all_reduce(reduce_sum)
        check_finite({name: torch.stack([m.sum.sum(), m.sum_outer.sum()])}, "calibration statistics (attention output)")
        module = heads[name]
        scores[name] = pruning_scores(m, witness, class_reduction).view(module.num_heads, -1).amax(1)
    return scores


def l1_head_scores(heads: Mapping[str, nn.Module]) -> dict[str, Tensor]:
    """Sum of absolute weights of each head's ``qkv`` rows and ``proj`` columns. name -> ``(num_heads,)`` float64."""
    out = {}
    for name, m in heads.items():
        width = head_dim(name, m)
        qkv = m.qkv.weight.detach().abs().view(3, m.num_heads, width, -1).sum((0, 2, 3))
        proj = m.proj.weight.detach().abs().view(-1, m.num_heads, width).sum((0, 2))
        out[name] = (qkv + proj).to(torch.float64)
    return out


def random_head_scores(heads: Mapping[str, nn.Module], generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Uniform scores, name -> ``(num_heads,)``."""
    return {name: random_scores(m.num_heads, generator) for name, m in heads.items()}
