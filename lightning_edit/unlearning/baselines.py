"""Unlearning baselines from the literature, on one interface and one budget: an epoch over the remaining data.

No maintained library ships them for plain PyTorch models, so they are written here from their papers:

- **NegGrad+** (Kurmanji et al., "Towards Unbounded Machine Unlearning" (SCRUB), NeurIPS 2023, Sec. 5 baselines):
  gradient descent on the remaining data and ascent on the forget data, ``α·CE(retain) − (1 − α)·CE(forget)``.
- **Random labels** (Golatkar et al., CVPR 2020; as evaluated by Jia et al., NeurIPS 2023): fine-tune on the forget
  samples relabelled to a random other class, beside the remaining data.
- **SalUn** (Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency", ICLR 2024,
  Sec. 4, Eq. 6–7): a weight-saliency mask (the fraction ``saliency`` of weights with the largest forget-loss gradient
  magnitude, over the whole model), then random-label fine-tuning that updates only those weights.

Each call walks the remaining batches once per epoch, pairing every remaining batch with the next forget batch
(cycled): the same number of optimiser steps and remaining samples as fine-tuning on the remaining classes, and
the same as DISCEDIT-U's fine-tuning epoch. The input model is not modified (a deep copy is trained).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

OptimizerFactory = Callable[..., torch.optim.Optimizer]


def _check(forget_batches: Sequence, retain_batches: Sequence, epochs: int, num_classes: int | None = None) -> None:
    if not forget_batches or not retain_batches:
        raise ValueError("Unlearning baselines need at least one forget batch and one remaining batch.")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}.")
    if num_classes is not None and num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}.")


def _random_label_loss(num_classes: int, seed: int) -> Callable[..., Tensor]:
    """``CE(remaining) + CE(forget, a random other class)``, the objective of random labels and SalUn."""
    gen = torch.Generator().manual_seed(seed)

    def loss(m, xr, yr, xf, yf):
        return F.cross_entropy(m(xr), yr) + F.cross_entropy(m(xf), _other_labels(yf, num_classes, gen))

    return loss


def _optimizer(model: nn.Module, lr: float, optimizer: OptimizerFactory | None) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return optimizer(params) if optimizer is not None else torch.optim.Adam(params, lr=lr)


def _other_labels(y: Tensor, num_classes: int, generator: torch.Generator) -> Tensor:
    """A uniformly random class other than each sample's own: ``(N,)`` long on ``y``'s device."""
    shift = torch.randint(1, num_classes, y.shape, generator=generator).to(y.device)
    return (y + shift) % num_classes


def _run(model: nn.Module, forget_batches, retain_batches, epochs, opt, loss_fn, grad_mask=None) -> nn.Module:
    device = next(model.parameters()).device
    for _ in range(epochs):
        model.train()
        for i, (xr, yr) in enumerate(retain_batches):
            xf, yf = forget_batches[i % len(forget_batches)]
            opt.zero_grad(set_to_none=True)
            loss_fn(model, xr.to(device), yr.to(device), xf.to(device), yf.to(device)).backward()
            if grad_mask is not None:
                for p, m in grad_mask:
                    if p.grad is not None:
                        p.grad.mul_(m)
            opt.step()
    return model.eval()


def neggrad_plus(
    model: nn.Module,
    forget_batches: Sequence[tuple[Tensor, Tensor]],
    retain_batches: Sequence[tuple[Tensor, Tensor]],
    epochs: int = 1,
    lr: float = 1e-3,
    alpha: float = 0.99,
    optimizer: OptimizerFactory | None = None,
) -> nn.Module:
    """NegGrad+: minimise ``α·CE(remaining) − (1 − α)·CE(forget)`` (Kurmanji et al., NeurIPS 2023).

    Args:
        model: a classifier ``(N, ...) -> (N, K)``; not modified.
        forget_batches / retain_batches: ``(x, y)`` batches of the forget classes / of the remaining classes.
        epochs: passes over ``retain_batches``.
        lr: Adam's learning rate (unless ``optimizer``, a factory ``params -> Optimizer``, is given).
        alpha: weight of the remaining-data loss, in (0, 1).

    Returns:
        the unlearned copy, in eval mode.

    Raises:
        ValueError: for empty batches, ``epochs < 1`` or ``alpha`` outside (0, 1).
    """
    _check(forget_batches, retain_batches, epochs)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}.")
    student = copy.deepcopy(model)

    def loss(m, xr, yr, xf, yf):
        return alpha * F.cross_entropy(m(xr), yr) - (1 - alpha) * F.cross_entropy(m(xf), yf)

    return _run(student, forget_batches, retain_batches, epochs, _optimizer(student, lr, optimizer), loss)


def random_labels(
    model: nn.Module,
    forget_batches: Sequence[tuple[Tensor, Tensor]],
    retain_batches: Sequence[tuple[Tensor, Tensor]],
    num_classes: int,
    epochs: int = 1,
    lr: float = 1e-3,
    seed: int = 0,
    optimizer: OptimizerFactory | None = None,
) -> nn.Module:
    """Random-label fine-tuning: ``CE(remaining) + CE(forget, random other class)`` (Golatkar et al., CVPR 2020).

    Args: as :func:`neggrad_plus`; ``num_classes``: K; ``seed``: of the random labels.

    Raises:
        ValueError: for empty batches, ``epochs < 1`` or ``num_classes < 2``.
    """
    _check(forget_batches, retain_batches, epochs, num_classes)
    student = copy.deepcopy(model)
    return _run(student, forget_batches, retain_batches, epochs, _optimizer(student, lr, optimizer),
                _random_label_loss(num_classes, seed))


def saliency_mask(model: nn.Module, forget_batches: Sequence[tuple[Tensor, Tensor]], saliency: float = 0.5
                  ) -> list[tuple[nn.Parameter, Tensor]]:
    """SalUn's weight saliency: 1 for the ``saliency`` fraction of weights with the largest ``|∇ CE(forget)|``.

    The gradient is summed over ``forget_batches`` (eval mode, so BatchNorm statistics are untouched) and the
    threshold is one quantile over every trainable parameter (Fan et al., ICLR 2024, Eq. 6, hard threshold).

    Returns:
        ``[(parameter, 0/1 mask of its shape)]``.

    Raises:
        ValueError: for ``saliency`` outside (0, 1].
    """
    if not 0.0 < saliency <= 1.0:
        raise ValueError(f"saliency must be in (0, 1], got {saliency}.")
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [torch.zeros_like(p) for p in params]
    was_training = model.training
    model.eval()
    device = params[0].device
    try:
        for x, y in forget_batches:
            g = torch.autograd.grad(F.cross_entropy(model(x.to(device)), y.to(device)), params, allow_unused=True)
            for acc, gi in zip(grads, g):
                if gi is not None:
                    acc.add_(gi.abs())
    finally:
        model.train(was_training)
    flat = torch.cat([g.flatten() for g in grads])
    k = max(1, round(saliency * flat.numel()))
    # exactly k weights, ties broken by position: a threshold `g >= kth value` would take every weight when more than
    # the salient fraction has a zero gradient (dead ReLU units), turning SalUn into plain random-label fine-tuning
    chosen = torch.zeros_like(flat)
    chosen[torch.topk(flat, k).indices] = 1
    return [(p, m.view_as(p).to(p.dtype)) for p, m in zip(params, chosen.split([g.numel() for g in grads]))]


def salun(
    model: nn.Module,
    forget_batches: Sequence[tuple[Tensor, Tensor]],
    retain_batches: Sequence[tuple[Tensor, Tensor]],
    num_classes: int,
    saliency: float = 0.5,
    epochs: int = 1,
    lr: float = 1e-3,
    seed: int = 0,
    optimizer: OptimizerFactory | None = None,
) -> nn.Module:
    """SalUn: random-label fine-tuning restricted to the salient weights (Fan et al., ICLR 2024, Eq. 7).

    Args: as :func:`random_labels`; ``saliency``: the fraction of weights updated (the authors' default is half).

    Raises:
        ValueError: as :func:`random_labels` and :func:`saliency_mask`.
    """
    _check(forget_batches, retain_batches, epochs, num_classes)
    student = copy.deepcopy(model)
    mask = saliency_mask(student, forget_batches, saliency)
    return _run(student, forget_batches, retain_batches, epochs, _optimizer(student, lr, optimizer),
                _random_label_loss(num_classes, seed), mask)


__all__ = ["neggrad_plus", "random_labels", "salun", "saliency_mask"]
