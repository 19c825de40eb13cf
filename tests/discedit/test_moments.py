from __future__ import annotations

import pytest
import torch

from lightning_edit.discedit import ClassConditionalMoments, check_targets, component_features


def test_streaming_equals_batch_and_matches_torch_cov():
    g = torch.Generator().manual_seed(0)
    out = torch.randn(300, 6, 5, 5, generator=g) * torch.linspace(0.5, 3, 6)[None, :, None, None]
    y = torch.randint(0, 4, (300,), generator=g)
    z = component_features(out, "quadratic")
    assert z.shape == (300, 6, 2) and z.dtype == torch.float64
    whole = ClassConditionalMoments.zeros(4, 6, 2)
    whole.update(z, y)
    stream = ClassConditionalMoments.zeros(4, 6, 2)
    for chunk in torch.split(torch.arange(300), 37):
        stream.update(z[chunk], y[chunk])
    for a, b in zip((whole.count, whole.sum, whole.sum_outer), (stream.count, stream.sum, stream.sum_outer)):
        torch.testing.assert_close(a, b)
    mean_p, cov_p, mean_q, cov_q = whole.one_vs_rest()
    for c in range(4):
        zc, zr = z[y == c], z[y != c]
        torch.testing.assert_close(mean_p[c], zc.mean(0))
        torch.testing.assert_close(mean_q[c], zr.mean(0))
        for j in range(6):
            torch.testing.assert_close(cov_p[c, j], torch.cov(zc[:, j].T, correction=0))
            torch.testing.assert_close(cov_q[c, j], torch.cov(zr[:, j].T, correction=0))


def test_all_reduce_sums_shards():
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(100, 3, 1, generator=g, dtype=torch.float64), torch.randint(0, 3, (100,), generator=g)
    a, b, whole = (ClassConditionalMoments.zeros(3, 3, 1) for _ in range(3))
    a.update(z[:50], y[:50])
    b.update(z[50:], y[50:])
    whole.update(z, y)
    a.all_reduce(lambda t: t + getattr(b, {id(a.count): "count", id(a.sum): "sum", id(a.sum_outer): "sum_outer"}[id(t)]))
    torch.testing.assert_close(a.sum_outer, whole.sum_outer)
    torch.testing.assert_close(a.count, whole.count)


def test_linear_layer_features_and_exp_norm():
    out = torch.tensor([[1.0, -2.0], [0.0, 3.0]])
    torch.testing.assert_close(component_features(out, "linear")[..., 0], out.double())
    torch.testing.assert_close(component_features(out, "exp_norm")[..., 0], torch.exp(-out.abs()).double())


def test_mean_energy_feature_is_mean_and_mean_square():
    g = torch.Generator().manual_seed(0)
    out = torch.randn(5, 3, 4, 4, generator=g)
    z = component_features(out, "mean_energy")
    assert z.shape == (5, 3, 2)
    torch.testing.assert_close(z[..., 0], out.mean((2, 3)).double())
    torch.testing.assert_close(z[..., 1], out.pow(2).mean((2, 3)).double())
    flat = torch.randn(5, 3, generator=g)  # a linear layer: one position, so [s, s²]
    torch.testing.assert_close(component_features(flat, "mean_energy"), component_features(flat, "quadratic"))


def test_energy_feature_sees_a_zero_sum_filter_that_the_spatial_mean_misses():
    """Classes that differ in texture (pixel variance), not brightness: the spatial mean of a zero-sum (Laplacian)
    filter's map is near 0 for both, its mean square is not. The energy feature's bound is high, [s, s²]'s low."""
    from torch import nn

    from lightning_edit.discedit import channel_scores

    g = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 2
    x = torch.randn(400, 1, 16, 16, generator=g) * torch.where(y == 1, 1.0, 0.2).view(-1, 1, 1, 1) + 0.5
    conv = nn.Conv2d(1, 1, 3, bias=False)
    with torch.no_grad():
        conv.weight[0, 0] = torch.tensor([[0.0, -1, 0], [-1, 4, -1], [0, -1, 0]])
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(196, 2))
    batches = list(zip(x.split(100), y.split(100)))
    mean_only = channel_scores(model, {"0": conv}, "discedit", batches, 2, "fisher")["0"]
    energy = channel_scores(model, {"0": conv}, "discedit", batches, 2, "fisher_energy")["0"]
    assert float(energy) > 0.9 and float(mean_only) < 0.3


@pytest.mark.parametrize("bad", [torch.zeros(4), torch.zeros(4, 3, dtype=torch.long), [0, 1]])
def test_targets_must_be_class_indices(bad):
    with pytest.raises(ValueError, match="class indices"):
        check_targets(bad)
