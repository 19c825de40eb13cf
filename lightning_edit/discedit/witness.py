"""Witness-function lower bounds on the total variation distance (DISCEDIT, Murti & Bhattacharyya, NeurIPS 2024, Sec. 3).

Every function here is pure torch and batched: leading dimensions ``(...)`` index independent
problems (components x classes), the last one or two index the feature dimension ``d``.
All return a bound in [0, 1] on TV(P, Q) = sup_A |P(A) - Q(A)| (dimensionless).
"""

from __future__ import annotations

import torch
from torch import Tensor


def regularise_covariance(cov: Tensor, shrinkage: float = 1e-4) -> Tensor:
    """Symmetrise and shrink a covariance towards a scaled identity: ``Σ + (ε tr(Σ)/d + τ) I``.

    ``τ = 1e-12`` keeps a zero-variance component (a dead channel) invertible; ``ε = shrinkage``
    (our choice, replacing the authors' fixed ``1e-5 I``) makes the regulariser scale-free.

    Shapes: ``cov (..., d, d)`` -> ``(..., d, d)``.
    """
    d = cov.shape[-1]
    cov = 0.5 * (cov + cov.transpose(-1, -2))
    eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
    tr = torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1).clamp_min(0.0)
    return cov + (shrinkage * tr / d + 1e-12)[..., None, None] * eye


def generic_witness_bound(mean_p: Tensor, second_p: Tensor, mean_q: Tensor, second_q: Tensor) -> Tensor:
    """TV bound from one scalar witness f (METHODS.md Sec. 1, by Cauchy-Schwarz and |p - q| <= p + q).

    .. math:: TV(P, Q) \\ge \\frac{(E_P f - E_Q f)^2}{2 (E_P f^2 + E_Q f^2)}

    Args:
        mean_p, mean_q: ``E f`` under P and Q, shape ``(...)``.
        second_p, second_q: raw second moments ``E f^2``, shape ``(...)``.

    Returns:
        ``(...)``; 0 where both second moments vanish.
    """
    denom = 2.0 * (second_p + second_q)
    return torch.where(denom > 0, (mean_p - mean_q) ** 2 / denom.clamp_min(torch.finfo(denom.dtype).tiny), 0.0).clamp(0, 1)


def fisher_ratio(delta: Tensor, cov: Tensor) -> Tensor:
    """``Δᵀ Σ⁻¹ Δ`` for ``delta (..., d)`` and a positive definite ``cov (..., d, d)``; returns ``(...)``."""
    return (delta * torch.linalg.solve(cov, delta.unsqueeze(-1)).squeeze(-1)).sum(-1).clamp_min(0.0)


def fisher_bound(mean_p: Tensor, cov_p: Tensor, mean_q: Tensor, cov_q: Tensor, shrinkage: float = 1e-4) -> Tensor:
    """Linear-witness (Fisher) bound: with ``F = Δᵀ (Σ_P + Σ_Q)⁻¹ Δ``, ``TV(P, Q) >= F / (2 + F)``.

    The best affine witness ``f(z) = uᵀz + b`` in the generic bound (optimal ``u ∝ Σ⁻¹Δ``);
    METHODS.md Sec. 1, "Linear witness", the DISCEDIT paper's Fisher-type bound.

    Args:
        mean_p, mean_q: class-conditional means, ``(..., d)``.
        cov_p, cov_q: class-conditional covariances, ``(..., d, d)``.
        shrinkage: see :func:`regularise_covariance`.

    Returns:
        ``(...)`` in [0, 1).
    """
    f = fisher_ratio(mean_p - mean_q, regularise_covariance(cov_p + cov_q, shrinkage))
    return f / (2.0 + f)


def robust_fisher_bound(
    mean_p: Tensor, cov_p: Tensor, mean_q: Tensor, cov_q: Tensor, rho: float = 0.05, r: float = 0.05,
    shrinkage: float = 1e-4, iterations: int = 8,
) -> Tensor:
    """Robust Fisher bound (Kim, Magnani & Boyd 2006 robust FDA; the DISCEDIT code's "robust" witness).

    ``F_rob = min over ‖m_P - μ_P‖ <= ρ‖μ_P‖, ‖m_Q - μ_Q‖ <= ρ‖μ_Q‖ of (m_P - m_Q)ᵀ A⁻¹ (m_P - m_Q)``
    with ``A = Σ_P + Σ_Q + r (‖Σ_P‖_F + ‖Σ_Q‖_F) I``; returns ``F_rob / (2 + F_rob)``.
    The mean difference ranges over the ball ``‖δ - Δ‖ <= R = ρ(‖μ_P‖ + ‖μ_Q‖)``; the minimiser
    ``δ = ν (A⁻¹ + νI)⁻¹ Δ`` puts ``p(ν) = Δ - δ = (M + νI)⁻¹ M Δ`` (``M = A⁻¹``) on the sphere ``‖p(ν)‖ = R``,
    a trust-region secular equation. We solve ``1/‖p(ν)‖ = 1/R`` by Newton's method from ``ν = 0``
    (Moré & Sorensen 1983): the left side is concave and increasing in ``ν``, so the iterates rise
    monotonically to the root without overshooting, quadratically near it. ``iterations`` Newton steps:
    6 reached float64 precision (relative error ≤ 4e-13 against a 200-halving bisection) on random problems
    with d ≤ 4 and condition numbers up to 1e8; the bisection used before needed 64 halvings.
    ``F_rob = 0`` when the ball contains ``Δ = 0``.

    Shapes: as :func:`fisher_bound`. Returns ``(...)``, never above :func:`fisher_bound` with ``r = 0``.
    """
    delta = mean_p - mean_q
    d = delta.shape[-1]
    eye = torch.eye(d, dtype=delta.dtype, device=delta.device)
    frob = torch.linalg.matrix_norm(cov_p) + torch.linalg.matrix_norm(cov_q)
    a = regularise_covariance(cov_p + cov_q, shrinkage) + (r * frob)[..., None, None] * eye
    lam_a, vecs = torch.linalg.eigh(a)
    lam = 1.0 / lam_a  # eigenvalues of M = A⁻¹
    dt = (vecs.transpose(-1, -2) @ delta.unsqueeze(-1)).squeeze(-1)  # Δ in the eigenbasis
    radius = rho * (mean_p.norm(dim=-1) + mean_q.norm(dim=-1))
    inside = delta.norm(dim=-1) <= radius
    tiny = torch.finfo(delta.dtype).tiny
    safe_radius = torch.where(radius > 0, radius, 1.0)
    g = lam * dt
    nu = torch.zeros_like(radius)
    for _ in range(iterations):
        shifted = lam + nu[..., None]
        p = g / shifted
        p2 = (p * p).sum(-1)
        curvature = (p * p / shifted).sum(-1)  # pᵀ(M + νI)⁻¹p = -½ d‖p‖²/dν
        step = (p2.sqrt() - safe_radius) / safe_radius * p2 / curvature.clamp_min(tiny)
        nu = nu + step.clamp_min(0.0)
    worst = nu[..., None] * dt / (lam + nu[..., None])  # worst-case mean difference, eigenbasis
    f = torch.where(inside, 0.0, (lam * worst**2).sum(-1))
    f = torch.where(radius > 0, f, (lam * dt**2).sum(-1))  # ρ = 0: plain Fisher on A
    return f / (2.0 + f)


def mpm_bound(
    mean_p: Tensor, cov_p: Tensor, mean_q: Tensor, cov_q: Tensor, shrinkage: float = 1e-4, iterations: int = 32
) -> Tensor:
    """Minimax probability machine witness (Lanckriet et al. 2002), bound ``κ² / (2 + κ²)``.

    ``1/κ = min_u ‖Σ_P^{1/2} u‖ + ‖Σ_Q^{1/2} u‖`` subject to ``uᵀΔ = 1``. We score ``κ²/(2 + κ²)``,
    which we can prove: at the MPM optimum ``u*``, ``u*ᵀ(Σ_P + Σ_Q)u* <= 1/κ²``, so the linear witness
    ``u*`` alone gives ``TV >= r/(2 + r)`` with ``r >= κ²`` (METHODS.md Sec. 1; the authors' code uses
    ``(κ/(√2 + κ))²`` instead). Hence this bound never exceeds :func:`fisher_bound`.

    For ``d = 1``, ``κ = |Δ| / (σ_P + σ_Q)`` exactly. For ``d = 2`` the feasible set is the line
    ``u = Δ/‖Δ‖² + t Δ⊥/‖Δ‖``; the objective is convex in ``t`` and is minimised by bisection on its
    monotone derivative inside a proven bracket. The bound depends on the minimum *value*, whose error is
    quadratic in the error of ``t``, so ``iterations = 32`` halvings give float64 precision (relative error
    ≤ 3e-12 against 300 halvings on random problems with condition numbers up to 1e8) and float32 results
    identical to 64 halvings, at half their cost.

    Shapes: as :func:`fisher_bound`, with ``d`` in {1, 2}.

    Raises:
        ValueError: for a feature dimension other than 1 or 2.
    """
    d = mean_p.shape[-1]
    sp, sq = regularise_covariance(cov_p, shrinkage), regularise_covariance(cov_q, shrinkage)
    delta = mean_p - mean_q
    dn2 = (delta**2).sum(-1)
    tiny = torch.finfo(delta.dtype).tiny
    if d == 1:
        kappa = delta[..., 0].abs() / (sp[..., 0, 0].sqrt() + sq[..., 0, 0].sqrt())
    elif d == 2:
        u0 = delta / dn2.clamp_min(tiny)[..., None]
        v = torch.stack([-delta[..., 1], delta[..., 0]], -1) / dn2.sqrt().clamp_min(tiny)[..., None]

        def quad(s: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # uᵀΣu = a t² + 2 b t + c
            sv, su = (s @ v.unsqueeze(-1)).squeeze(-1), (s @ u0.unsqueeze(-1)).squeeze(-1)
            return (v * sv).sum(-1), (v * su).sum(-1), (u0 * su).sum(-1)

        (a1, b1, c1), (a2, b2, c2) = quad(sp), quad(sq)

        def slope(t: Tensor) -> Tensor:
            q1 = (a1 * t * t + 2 * b1 * t + c1).clamp_min(tiny)
            q2 = (a2 * t * t + 2 * b2 * t + c2).clamp_min(tiny)
            return (a1 * t + b1) / q1.sqrt() + (a2 * t + b2) / q2.sqrt()

        g0 = c1.clamp_min(0).sqrt() + c2.clamp_min(0).sqrt()
        centre, half = -b1 / a1, g0 / a1.sqrt()  # |t* + b1/a1| <= g(0)/√a1 since g(t) >= √a1 |t + b1/a1|
        lo, hi = centre - half, centre + half
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            up = slope(mid) > 0
            lo, hi = torch.where(up, lo, mid), torch.where(up, mid, hi)
        t = 0.5 * (lo + hi)
        g = (a1 * t * t + 2 * b1 * t + c1).clamp_min(0).sqrt() + (a2 * t * t + 2 * b2 * t + c2).clamp_min(0).sqrt()
        kappa = torch.where(dn2 > 0, 1.0 / g.clamp_min(tiny), 0.0)
    else:
        raise ValueError(f"mpm_bound supports feature dimension 1 or 2, got {d}; use witness='fisher' for larger d.")
    k2 = kappa**2
    return torch.where(torch.isfinite(k2), k2 / (2.0 + k2), 1.0)
