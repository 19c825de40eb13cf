"""Robustness probes: L∞ PGD (Madry et al., ICLR 2018) and common corruptions (Hendrycks & Dietterich 2019).

Inputs are in the model's input space (our DataModules standardise: ``x = (pixel - mean) / std``).
Budgets are given in pixel units ([0, 1] images) and converted with ``input_std``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def pgd_attack(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int = 10, step_size: float | None = None,
    input_std: float = 1.0, random_start: bool = True, generator: torch.Generator | None = None,
    targeted: bool = False,
) -> Tensor:
    """Untargeted L∞ projected gradient ascent on the cross-entropy (``targeted=True``: descent towards ``y``).

    Args:
        model: classifier, used in its current mode (put it in eval mode first).
        x: ``(N, ...)`` inputs; y: ``(N,)`` labels.
        eps: budget in pixel units (e.g. 8/255); ``eps / input_std`` in input units.
        steps: iterations; step_size: per step, pixel units (default ``2.5 · eps / steps``).
        input_std: the standardisation std of the inputs.
        random_start: start uniformly inside the ball.
        targeted: ``y`` are the classes to reach, and the cross-entropy to them is minimised.

    Returns:
        adversarial ``x_adv`` with ``‖x_adv - x‖_∞ <= eps / input_std``.

    Raises:
        ValueError: for ``eps < 0`` or ``steps < 1``.
    """
    if eps < 0 or steps < 1:
        raise ValueError(f"Need eps >= 0 and steps >= 1, got eps={eps}, steps={steps}.")
    bound = eps / input_std
    alpha = (step_size if step_size is not None else 2.5 * eps / steps) / input_std
    x = x.detach()
    if bound == 0:
        return x.clone()
    delta = torch.zeros_like(x)
    if random_start:
        delta = (torch.rand(x.shape, generator=generator).to(x) * 2 - 1) * bound
    for _ in range(steps):
        delta.requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(x + delta), y)
            (grad,) = torch.autograd.grad(loss, delta)
        direction = -grad.sign() if targeted else grad.sign()
        delta = (delta.detach() + alpha * direction).clamp(-bound, bound)
    return (x + delta).detach()


def gaussian_noise(x: Tensor, sigma: float, input_std: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Add i.i.d. Gaussian noise of std ``sigma`` pixel units."""
    return x + torch.randn(x.shape, generator=generator).to(x) * (sigma / input_std)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Blur each channel of ``x (N, C, H, W)`` with a Gaussian of std ``sigma`` pixels (kernel 2⌈2σ⌉+1, reflect padding)."""
    if sigma <= 0:
        return x.clone()
    radius = max(1, math.ceil(2 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius,) * 4, mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def contrast(x: Tensor, factor: float) -> Tensor:
    """Scale each image's deviation from its own mean by ``factor`` (< 1 lowers contrast)."""
    mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
    return (x - mean) * factor + mean


CORRUPTIONS = {
    "gaussian_noise": lambda x, s, std, g: gaussian_noise(x, s, std, g),
    "blur": lambda x, s, std, g: gaussian_blur(x, s),
    "contrast": lambda x, s, std, g: contrast(x, s),
}
"""name -> ``(x, severity, input_std, generator) -> corrupted x``."""
