"""Editors that change few parameters (Brown et al., "Robustness of edited neural networks", 2023).

Every editor has ``edit(model, x, y) -> (edited copy, EditResult)``: the input model is untouched
(the same interface as :class:`lightning_edit.editable.GradientEditor`). ``x (B, ...)`` are the edit
inputs, ``y (B,)`` the labels they must get.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from lightning_edit.editable.editors import EditResult, check_edit


class Editor(Protocol):
    """What every editor offers: an edited copy of ``model`` that maps ``x`` to ``y``, and an :class:`EditResult`."""

    def edit(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[nn.Module, EditResult]: ...


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``.

    Raises:
        ValueError: if it does not exist or has no ``weight`` (the message lists the layers that do).
    """
    modules = dict(model.named_modules())
    if name not in modules or not isinstance(getattr(modules[name], "weight", None), Tensor):
        layers = [n for n, m in modules.items() if isinstance(getattr(m, "weight", None), Tensor)]
        raise ValueError(f"No layer with weights called {name!r}; layers are {layers}.")
    return modules[name]


def fit_until_correct(
    forward: Callable[[], Tensor], params: Sequence[Tensor], y: Tensor, lr: float, max_steps: int
) -> int:
    """Adam on ``cross_entropy(forward(), y)`` over ``params`` until every prediction equals ``y`` or ``max_steps``.

    Returns:
        the number of steps taken.
    """
    opt = torch.optim.Adam(params, lr=lr)
    steps = 0
    with torch.enable_grad():
        for steps in range(max_steps + 1):
            logits = forward()
            if bool((logits.argmax(-1) == y).all()) or steps == max_steps:
                break
            opt.zero_grad()
            F.cross_entropy(logits, y).backward()
            opt.step()
    return steps


def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return (model(x).argmax(-1) == y).float().mean()


class FineTuneEditor:
    """Fine-tune all parameters, or those of named layers, on the edit set with cross-entropy.

    Stops as soon as every edit input is classified as its label, or after ``max_steps``.

    Args:
        layers: module names whose parameters are trained (None: every parameter).
        lr: Adam learning rate.
        max_steps: step limit.

    Raises:
        ValueError: for an unknown layer name (at :meth:`edit`), a non-positive lr or step limit, an empty edit set.
    """

    def __init__(self, layers: Sequence[str] | None = None, lr: float = 1e-3, max_steps: int = 100) -> None:
        if lr <= 0 or max_steps < 1:
            raise ValueError(f"Need lr > 0 and max_steps >= 1, got lr={lr}, max_steps={max_steps}.")
        self.layers, self.lr, self.max_steps = list(layers) if layers is not None else None, lr, max_steps

    def edit(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[nn.Module, EditResult]:
        edited = copy.deepcopy(model).eval()
        x, y = check_edit(edited, x, y)
        if self.layers is None:
            params = [p for p in edited.parameters() if p.requires_grad]
        else:
            params = [p for name in self.layers for p in get_layer(edited, name).parameters()]
        steps = fit_until_correct(lambda: edited(x), params, y, self.lr, self.max_steps)
        with torch.no_grad():
            logits = edited(x)
        return edited, EditResult(bool((logits.argmax(-1) == y).all()), steps, float(F.cross_entropy(logits, y)))


class InterpolationEditor:
    """1-layer interpolation (1-LI): fine-tune one layer, then ``W(α) = (1 - α) W₀ + α W_ft``.

    α is the smallest value on a grid of ``num_alphas`` points in [0, 1] at which the accuracy on the
    selection set (``x_select, y_select`` given to :meth:`edit`, default the edit set) reaches
    ``target_accuracy``; α = 1 if none does. (The paper's exact rule could not be read; this is the
    documented choice: the least change that still achieves the edit.)

    Args:
        layer: the module whose parameters are fine-tuned and interpolated.
        target_accuracy: edit accuracy to reach, in (0, 1].
        num_alphas: grid size.
        lr, max_steps: of the one-layer fine-tune.

    Attributes:
        alpha: the α of the last edit (its ``EditResult.steps`` are those of the one-layer fine-tune).
    """

    def __init__(self, layer: str, target_accuracy: float = 1.0, num_alphas: int = 21, lr: float = 1e-3, max_steps: int = 100):
        if not 0 < target_accuracy <= 1 or num_alphas < 2:
            raise ValueError(f"Need 0 < target_accuracy <= 1 and num_alphas >= 2, got {target_accuracy}, {num_alphas}.")
        self.layer, self.target_accuracy, self.num_alphas = layer, target_accuracy, num_alphas
        self.finetune = FineTuneEditor([layer], lr, max_steps)
        self.alpha: float | None = None

    def interpolate(self, original: nn.Module, finetuned: nn.Module, alpha: float) -> nn.Module:
        """A copy of ``original`` whose layer holds ``(1 - α) W₀ + α W_ft`` (α = 0: original, 1: fine-tuned)."""
        out = copy.deepcopy(original)
        w0, w1 = get_layer(original, self.layer), get_layer(finetuned, self.layer)
        with torch.no_grad():
            for p, p0, p1 in zip(get_layer(out, self.layer).parameters(), w0.parameters(), w1.parameters()):
                p.copy_(torch.lerp(p0, p1, alpha))
        return out

    def edit(
        self, model: nn.Module, x: Tensor, y: Tensor, x_select: Tensor | None = None, y_select: Tensor | None = None
    ) -> tuple[nn.Module, EditResult]:
        get_layer(model, self.layer)
        finetuned, tuned = self.finetune.edit(model, x, y)
        xs, ys = (x, y) if x_select is None else (x_select, y_select)
        xs, ys = check_edit(model, xs, ys)
        chosen = None
        for alpha in torch.linspace(0, 1, self.num_alphas).tolist():
            candidate = self.interpolate(model, finetuned, alpha).eval()
            if float(_accuracy(candidate, xs, ys)) >= self.target_accuracy - 1e-9:
                chosen = (alpha, candidate)
                break
        if chosen is None:
            chosen = (1.0, self.interpolate(model, finetuned, 1.0).eval())
        self.alpha = chosen[0]
        edited = chosen[1]
        x, y = check_edit(edited, x, y)
        with torch.no_grad():
            logits = edited(x)
        success = bool((logits.argmax(-1) == y).all())
        return edited, EditResult(success, tuned.steps, float(F.cross_entropy(logits, y)))


class LowRankEditor:
    """Direct low-rank editing of one layer: ``W = W₀ + U Vᵀ`` with ``U (out, r)``, ``V (in·k·k, r)``.

    ``U`` starts at 0 and ``V`` small random (so the edit starts at the original model); both are
    trained with Adam on the edit set's cross-entropy until every edit input is right or ``max_steps``.
    The change has rank at most ``r`` by construction (the paper's v1 "direct low-rank editing"; its
    fitting procedure could not be read, this is the documented choice).

    Raises:
        ValueError: for an unknown layer, ``rank < 1`` or larger than ``min(out, in·k·k)``, an empty edit set.
    """

    def __init__(self, layer: str, rank: int = 1, lr: float = 1e-2, max_steps: int = 200, seed: int = 0) -> None:
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}.")
        self.layer, self.rank, self.lr, self.max_steps, self.seed = layer, rank, lr, max_steps, seed

    def edit(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[nn.Module, EditResult]:
        edited = copy.deepcopy(model).eval()
        layer = get_layer(edited, self.layer)
        w0 = layer.weight.detach()
        out_dim, in_dim = w0.shape[0], math.prod(w0.shape[1:])
        if self.rank > min(out_dim, in_dim):
            raise ValueError(f"rank {self.rank} is larger than layer {self.layer!r} allows (min({out_dim}, {in_dim})).")
        x, y = check_edit(edited, x, y)
        g = torch.Generator().manual_seed(self.seed)
        u = torch.zeros(out_dim, self.rank, device=w0.device, requires_grad=True)
        v = (torch.randn(in_dim, self.rank, generator=g) / math.sqrt(in_dim)).to(w0.device).requires_grad_(True)
        key = f"{self.layer}.weight" if self.layer else "weight"

        def forward() -> Tensor:
            return functional_call(edited, {key: w0 + (u @ v.T).reshape(w0.shape)}, (x,))

        steps = fit_until_correct(forward, [u, v], y, self.lr, self.max_steps)
        with torch.no_grad():
            layer.weight.copy_(w0 + (u @ v.T).reshape(w0.shape))
            logits = edited(x)
        return edited, EditResult(bool((logits.argmax(-1) == y).all()), steps, float(F.cross_entropy(logits, y)))
