"""Gradient-descent editors (Sinitsin et al., "Editable Neural Networks", ICLR 2020, Sec. 3).

An edit makes input ``x`` be classified as ``y_ref``: the constraint ``l_e(θ) <= 0`` with

.. math:: l_e(θ) = \\max(0, \\max_{y \\ne y_{ref}} \\log p(y|x,θ) - \\log p(y_{ref}|x,θ))

The editor takes at most ``k`` steps of an optimiser on ``l_e`` and stops when it is 0. Steps are
functional (new tensors, the module untouched), so with ``create_graph=True`` the outer training
loss back-propagates through them (full second order, as the authors' code).
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

Method = Literal["sgd", "momentum", "rmsprop", "adam"]


def edit_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Per-sample edit loss ``relu(max_{y≠t} log p(y) - log p(t))``; 0 iff ``t`` is the argmax.

    Shapes: ``logits (B, K)``, ``target (B,)`` long -> ``(B,)``.
    """
    logp = torch.log_softmax(logits, dim=-1)
    target_logp = logp.gather(1, target[:, None]).squeeze(1)
    others = logp.scatter(1, target[:, None], -torch.inf)
    return torch.relu(others.amax(1) - target_logp)


@dataclass
class EditResult:
    """Outcome of one edit.

    The one result type of every editor in the package (:mod:`lightning_edit.edit`).

    Attributes:
        success: every edited sample is now classified as its target.
        steps: optimiser steps taken (0 if the model was already right, or for a one-pass editor).
        loss: final mean edit loss (nats).
        edit_accuracy: fraction of the edit set classified as its target, in [0, 1] (None: not measured).
        drift: how far the edited model moved from the original on retain data (mean KL in nats, or the
            retain cross-entropy, per the editor's ``locality``); without retain data, the squared L2
            distance of the edited parameters. None: not measured.
    """

    success: bool
    steps: int
    loss: float
    edit_accuracy: float | None = None
    drift: float | None = None


def select_parameters(model: nn.Module, patterns: Sequence[str] | None) -> dict[str, Tensor]:
    """Parameters of ``model`` whose names match any ``fnmatch`` pattern (None: all), in registration order.

    Raises:
        ValueError: if no parameter matches, or none of the matches requires grad (names the candidates).
    """
    named = dict(model.named_parameters())
    chosen = named if patterns is None else {n: p for n, p in named.items() if any(fnmatch.fnmatchcase(n, q) for q in patterns)}
    if not chosen:
        raise ValueError(f"Editable parameter patterns {list(patterns or [])} match nothing; parameters are {list(named)[:20]}...")
    trainable = {n: p for n, p in chosen.items() if p.requires_grad}
    if not trainable:
        raise ValueError(f"None of the editable parameters {list(chosen)} requires grad; unfreeze them or pick others.")
    return trainable


class GradientEditor(nn.Module):
    """In-graph gradient descent on the edit loss, with an optional learned learning rate.

    Args:
        lr: step size (the authors' code: 1e-3 with RMSProp on CIFAR-10).
        max_steps: step limit ``k`` (10 in every experiment of the paper).
        method: ``"sgd"``, ``"momentum"`` (heavy ball), ``"rmsprop"`` (first step ewma = g², as the authors'
            code) or ``"adam"`` (bias-corrected).
        momentum: momentum coefficient for ``"momentum"`` and the first moment of ``"adam"``.
        beta: second-moment decay of ``"rmsprop"``/``"adam"`` (0.5 in the authors' code).
        eps: added to the second moment before the square root.
        learn_lr: make ``log lr`` a parameter, trained with the model during editable training.
        editable_parameters: default ``fnmatch`` patterns of the parameters :meth:`edit` changes (None: all), so
            that the editor is complete when built by name (:func:`lightning_edit.edit.make_editor`).

    Raises:
        ValueError: for a non-positive lr, ``max_steps < 1`` or an unknown method.
    """

    def __init__(
        self, lr: float = 1e-3, max_steps: int = 10, method: Method = "rmsprop", momentum: float = 0.9,
        beta: float = 0.5, eps: float = 1e-8, learn_lr: bool = True, editable_parameters: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.editable_parameters = list(editable_parameters) if editable_parameters is not None else None
        if lr <= 0 or max_steps < 1:
            raise ValueError(f"Need lr > 0 and max_steps >= 1, got lr={lr}, max_steps={max_steps}.")
        if method not in ("sgd", "momentum", "rmsprop", "adam"):
            raise ValueError(f"method must be 'sgd', 'momentum', 'rmsprop' or 'adam', got {method!r}.")
        self.log_lr = nn.Parameter(torch.tensor(math.log(lr)), requires_grad=learn_lr)
        self.max_steps, self.method, self.momentum, self.beta, self.eps = max_steps, method, momentum, beta, eps

    @property
    def lr(self) -> Tensor:
        """The step size, ``exp(log_lr)`` (0-d tensor, differentiable when learned)."""
        return self.log_lr.exp()

    def run(
        self,
        params: Mapping[str, Tensor],
        loss_fn: Callable[[dict[str, Tensor]], Tensor],
        create_graph: bool = False,
        early_stop: bool = True,
        max_steps: int | None = None,
    ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Apply up to ``max_steps`` steps to ``params``.

        Args:
            params: name -> tensor (requires grad when ``create_graph``).
            loss_fn: ``params -> (B,)`` per-sample edit losses.
            create_graph: keep the graph through the steps (editable training).
            early_stop: stop as soon as every loss is 0 (one host sync per step). Without it, all steps run
                but each one is gated by ``loss > 0``, which is the same update with no host sync.
            max_steps: override of the step limit.

        Returns:
            ``(edited params, steps taken (0-d long tensor), final per-sample loss (B,))``.
        """
        params = dict(params)
        state: dict[str, tuple[Tensor, Tensor]] = {}
        steps = torch.zeros((), dtype=torch.long, device=next(iter(params.values())).device)
        lr = self.lr
        for t in range(max_steps or self.max_steps):
            loss = loss_fn(params)
            active = (loss > 0).any()
            if early_stop and not bool(active):
                return params, steps, loss
            grads = torch.autograd.grad(loss.sum(), list(params.values()), create_graph=create_graph, allow_unused=True)
            gate = active.to(lr.dtype)
            for (name, p), g in zip(list(params.items()), grads):
                if g is None:
                    continue
                params[name] = p - gate * lr * self._direction(name, g, state, t)
            steps = steps + active.long()
        return params, steps, loss_fn(params)

    def _direction(self, name: str, g: Tensor, state: dict, t: int) -> Tensor:
        if self.method == "sgd":
            return g
        if self.method == "momentum":
            v = g if name not in state else self.momentum * state[name][0] + g
            state[name] = (v, v)
            return v
        sq = g * g
        if self.method == "rmsprop":
            ewma = sq if name not in state else self.beta * state[name][1] + (1 - self.beta) * sq
            state[name] = (g, ewma)
            return g / (ewma + self.eps).sqrt()
        m = (1 - self.momentum) * g if name not in state else self.momentum * state[name][0] + (1 - self.momentum) * g
        v = (1 - self.beta) * sq if name not in state else self.beta * state[name][1] + (1 - self.beta) * sq
        state[name] = (m, v)
        m_hat, v_hat = m / (1 - self.momentum ** (t + 1)), v / (1 - self.beta ** (t + 1))
        return m_hat / (v_hat + self.eps).sqrt()

    def edit(
        self, model: nn.Module, x: Tensor, y_target: Tensor, parameters: Sequence[str] | None = None,
        num_classes: int | None = None, max_steps: int | None = None,
    ) -> tuple[nn.Module, EditResult]:
        """Return an edited copy of ``model`` that classifies ``x`` as ``y_target`` (``model`` is untouched).

        Args:
            model: a classifier ``(B, ...) -> (B, K)``; edited in eval mode.
            x: ``(B, ...)`` inputs, ``B >= 1`` (a batched edit: all samples at once).
            y_target: ``(B,)`` target classes.
            parameters: ``fnmatch`` patterns of the editable parameters (None: the constructor's
                ``editable_parameters``, else all).
            num_classes: K, to validate targets (default: the model's output width).
            max_steps: override of the step limit.

        Returns:
            ``(edited copy, EditResult)``.

        Raises:
            ValueError: for an empty edit batch, mismatched shapes, a target outside ``[0, K)``, or editable
                parameters that match nothing / do not require grad.
        """
        edited = copy.deepcopy(model).eval()
        params = select_parameters(edited, parameters if parameters is not None else self.editable_parameters)
        x, y_target = check_edit(edited, x, y_target, num_classes)
        detached = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}

        def loss_fn(ps: dict[str, Tensor]) -> Tensor:
            return edit_loss(functional_call(edited, ps, (x,)), y_target)

        with torch.enable_grad():
            new, steps, loss = self.run(detached, loss_fn, create_graph=False, early_stop=True, max_steps=max_steps)
        with torch.no_grad():
            for name, value in new.items():
                params[name].copy_(value.detach())
        result = EditResult(success=bool((loss <= 0).all()), steps=int(steps), loss=float(loss.detach().mean()),
                            edit_accuracy=float((loss.detach() <= 0).float().mean()))
        return edited, result


def check_edit(model: nn.Module, x: Tensor, y_target: Tensor, num_classes: int | None = None) -> tuple[Tensor, Tensor]:
    """Validate an edit batch; returns ``(x, y_target)`` on the model's device.

    Raises:
        ValueError: empty batch, ``len(x) != len(y_target)``, or targets outside ``[0, K)``.
    """
    if x.ndim == 0 or len(x) == 0:
        raise ValueError("The edit batch is empty; pass at least one input with its target class.")
    y_target = torch.as_tensor(y_target).reshape(-1)
    if len(y_target) != len(x):
        raise ValueError(f"{len(x)} edit inputs but {len(y_target)} targets.")
    device = next(model.parameters()).device
    x, y_target = x.to(device), y_target.to(device).long()
    if num_classes is None:
        was_training = model.training
        model.eval()  # a probe forward must not touch BatchNorm statistics
        try:
            with torch.no_grad():
                num_classes = model(x[:1]).shape[-1]
        finally:
            model.train(was_training)
    if int(y_target.min()) < 0 or int(y_target.max()) >= num_classes:
        raise ValueError(f"Edit targets {y_target.tolist()} are outside the classes 0..{num_classes - 1}.")
    return x, y_target
