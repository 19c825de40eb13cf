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


@pytest.mark.parametrize("bad", [torch.zeros(4), torch.zeros(4, 3, dtype=torch.long), [0, 1]])
def test_targets_must_be_class_indices(bad):
    with pytest.raises(ValueError, match="class indices"):
        check_targets(bad)
