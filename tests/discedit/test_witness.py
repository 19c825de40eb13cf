"""Witness bounds against closed-form total variation distances of Gaussians."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_edit.discedit import (
    ClassConditionalMoments,
    class_vs_rest_bounds,
    fisher_bound,
    generic_witness_bound,
    mpm_bound,
    regularise_covariance,
    robust_fisher_bound,
)

Phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731


def gaussian_quadratic_moments(mu: float, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact mean and covariance of z = [x, x²] for x ~ N(mu, sigma²)."""
    m1, m2 = mu, mu**2 + sigma**2
    m3, m4 = mu**3 + 3 * mu * sigma**2, mu**4 + 6 * mu**2 * sigma**2 + 3 * sigma**4
    mean = torch.tensor([m1, m2], dtype=torch.float64)
    cov = torch.tensor([[m2 - m1**2, m3 - m1 * m2], [m3 - m1 * m2, m4 - m2**2]], dtype=torch.float64)
    return mean, cov


def tv_shifted(delta: float, sigma: float = 1.0) -> float:
    return 2 * Phi(abs(delta) / (2 * sigma)) - 1


def tv_scaled(s1: float, s2: float) -> float:
    """TV(N(0, s1²), N(0, s2²)), s1 < s2: densities cross at ±x*."""
    x = math.sqrt(2 * s1**2 * s2**2 * math.log(s2 / s1) / (s2**2 - s1**2))
    return (2 * Phi(x / s1) - 1) - (2 * Phi(x / s2) - 1)


BOUNDS = {
    "fisher": fisher_bound,
    "robust_fisher": robust_fisher_bound,
    "mpm": mpm_bound,
}


@pytest.mark.parametrize("name", list(BOUNDS))
@pytest.mark.parametrize("dim", [1, 2])
def test_bound_below_true_tv_and_tighter_as_means_separate(name, dim):
    deltas = [0.25, 0.5, 1.0, 2.0, 3.0, 5.0]
    values = []
    for delta in deltas:
        mp, cp = gaussian_quadratic_moments(0.0, 1.0)
        mq, cq = gaussian_quadratic_moments(delta, 1.0)
        if dim == 1:
            mp, cp, mq, cq = mp[:1], cp[:1, :1], mq[:1], cq[:1, :1]
        b = float(BOUNDS[name](mp, cp, mq, cq))
        assert 0.0 <= b <= tv_shifted(delta) + 1e-9, (name, delta, b, tv_shifted(delta))
        values.append(b)
    assert all(a < b for a, b in zip(values, values[1:])), values
    assert values[-1] > 0.5  # a 5σ shift is detected


def test_linear_fisher_matches_closed_form():
    # Equal variances: F = Δ²/(2σ²), bound = F/(2+F)
    mp, cp = torch.tensor([0.0], dtype=torch.float64), torch.tensor([[1.0]], dtype=torch.float64)
    mq = torch.tensor([2.0], dtype=torch.float64)
    f = 4.0 / 2.0
    assert float(fisher_bound(mp, cp, mq, cp, shrinkage=0.0)) == pytest.approx(f / (2 + f), rel=1e-9)


def test_quadratic_witness_sees_a_variance_change_linear_does_not():
    mp, cp = gaussian_quadratic_moments(0.0, 1.0)
    mq, cq = gaussian_quadratic_moments(0.0, 3.0)
    quad = float(fisher_bound(mp, cp, mq, cq))
    lin = float(fisher_bound(mp[:1], cp[:1, :1], mq[:1], cq[:1, :1]))
    assert lin == pytest.approx(0.0, abs=1e-12)
    assert 0.05 < quad <= tv_scaled(1.0, 3.0)


def test_mpm_and_robust_never_exceed_fisher():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 2, 2, generator=g, dtype=torch.float64)
    b = torch.randn(64, 2, 2, generator=g, dtype=torch.float64)
    cp, cq = a @ a.mT + 0.1 * torch.eye(2), b @ b.mT + 0.1 * torch.eye(2)
    mp, mq = torch.randn(64, 2, generator=g, dtype=torch.float64), torch.randn(64, 2, generator=g, dtype=torch.float64)
    fisher = fisher_bound(mp, cp, mq, cq)
    assert torch.all(mpm_bound(mp, cp, mq, cq) <= fisher + 1e-9)
    assert torch.all(robust_fisher_bound(mp, cp, mq, cq) <= fisher + 1e-9)


def test_robust_fisher_matches_brute_force_over_the_ball():
    g = torch.Generator().manual_seed(2)
    t = torch.linspace(0, 2 * torch.pi, 400001, dtype=torch.float64)
    circle = torch.stack([t.cos(), t.sin()], -1)
    for scale in (1.0, 1e-3, 1e3):  # eigenvalues of A from well to badly scaled
        a, b = torch.randn(2, 2, generator=g, dtype=torch.float64), torch.randn(2, 2, generator=g, dtype=torch.float64)
        cp, cq = a @ a.T * scale + 0.01 * torch.eye(2, dtype=torch.float64), b @ b.T
        mp, mq = torch.tensor([3.0, -1.0], dtype=torch.float64), torch.tensor([0.5, 0.7], dtype=torch.float64)
        rho, r = 0.2, 0.05
        frob = torch.linalg.matrix_norm(cp) + torch.linalg.matrix_norm(cq)
        m = torch.linalg.inv(regularise_covariance(cp + cq, 1e-4) + r * frob * torch.eye(2, dtype=torch.float64))
        radius = rho * (mp.norm() + mq.norm())
        deltas = (mp - mq) + radius * circle  # the minimum lies on the sphere: Δ is outside the ball
        f = torch.einsum("ni,ij,nj->n", deltas, m, deltas).min()
        got = robust_fisher_bound(mp, cp, mq, cq, rho=rho, r=r)
        assert float(got) == pytest.approx(float(f / (2 + f)), rel=1e-8)
    inside = robust_fisher_bound(mp, cp, mp + 0.01, cq, rho=rho)  # the ball holds Δ = 0
    assert float(inside) == 0.0


def test_mpm_two_dim_matches_brute_force_line_search():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 2, generator=g, dtype=torch.float64), torch.randn(2, 2, generator=g, dtype=torch.float64)
    cp, cq = a @ a.T + 0.2 * torch.eye(2, dtype=torch.float64), b @ b.T + 0.2 * torch.eye(2, dtype=torch.float64)
    delta = torch.tensor([1.0, -0.5], dtype=torch.float64)
    t = torch.linspace(-50, 50, 200001, dtype=torch.float64)
    u = delta / delta.dot(delta) + t[:, None] * torch.stack([-delta[1], delta[0]]) / delta.norm()
    obj = (torch.einsum("ni,ij,nj->n", u, cp, u).sqrt() + torch.einsum("ni,ij,nj->n", u, cq, u).sqrt()).min()
    kappa2 = 1 / obj**2
    got = mpm_bound(delta, cp, torch.zeros(2, dtype=torch.float64), cq, shrinkage=0.0)
    assert float(got) == pytest.approx(float(kappa2 / (2 + kappa2)), rel=1e-5)


def test_zero_variance_is_finite():
    zero = torch.zeros(2, 2, dtype=torch.float64)
    same = torch.tensor([1.0, 1.0], dtype=torch.float64)
    other = torch.tensor([2.0, 4.0], dtype=torch.float64)
    for fn in BOUNDS.values():
        assert float(fn(same, zero, same, zero)) == pytest.approx(0.0, abs=1e-9)  # identical point masses
        assert float(fn(same, zero, other, zero)) == pytest.approx(1.0, abs=1e-6)  # disjoint point masses: TV = 1
    assert float(generic_witness_bound(*(torch.zeros(()),) * 4)) == 0.0


def test_sampled_moments_give_bounds_below_tv():
    g = torch.Generator().manual_seed(0)
    n = 20000
    x = torch.cat([torch.randn(n, generator=g), torch.randn(n, generator=g) * 2.0 + 1.0]).double()
    y = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)])
    m = ClassConditionalMoments.zeros(2, 1, 2)
    m.update(torch.stack([x, x * x], -1)[:, None, :], y)
    bounds = class_vs_rest_bounds(m, "fisher")
    # TV(N(0,1), N(1,4)) by numerical integration
    grid = torch.linspace(-20, 20, 400001, dtype=torch.float64)
    p = torch.exp(-grid**2 / 2) / math.sqrt(2 * math.pi)
    q = torch.exp(-((grid - 1) ** 2) / 8) / math.sqrt(8 * math.pi)
    tv = 0.5 * float(torch.trapezoid((p - q).abs(), grid))
    assert torch.all(bounds <= tv + 0.01)
    assert float(bounds.min()) > 0.1
