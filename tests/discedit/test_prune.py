from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_edit.discedit import (
    ClassConditionalMoments,
    channel_scores,
    enable_edit_reload,
    prunable_layers,
    prune_channels,
    pruning_scores,
)


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))


def test_lowest_scored_channels_are_removed_and_survivors_keep_their_weights():
    model = net()
    w0 = model[0].weight.detach().clone()
    layers = prunable_layers(model)
    assert list(layers) == ["0", "2"]  # the classifier output is excluded
    scores = {"0": torch.tensor([5.0, 0.1, 4.0, 0.2, 3.0, 0.3, 2.0, 1.0], dtype=torch.float64),
              "2": torch.arange(6, dtype=torch.float64)}
    result = prune_channels(model, torch.zeros(1, 1, 8, 8), scores, 0.5, layers)
    assert result.plan == {"0": [1, 3, 5, 7], "2": [0, 1, 2]}
    assert torch.equal(model[0].weight, w0[[0, 2, 4, 6]])
    assert model[2].in_channels == 4 and model[6].in_features == 3
    assert result.sparsity == pytest.approx(7 / 14)


def test_pruned_state_dict_reloads_into_fresh_architecture():
    model = enable_edit_reload(net())
    layers = prunable_layers(model)
    prune_channels(model, torch.zeros(1, 1, 8, 8), channel_scores(model, layers, "l1"), 0.5, layers)
    fresh = enable_edit_reload(net())
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    fresh.load_state_dict(model.state_dict())  # idempotent
    assert fresh[0].out_channels == 4


def test_class_reductions_and_errors():
    g = torch.Generator().manual_seed(0)
    m = ClassConditionalMoments.zeros(3, 4, 1)
    m.update(torch.randn(90, 4, 1, generator=g, dtype=torch.float64) + torch.arange(3).repeat(30)[:, None, None],
             torch.arange(3).repeat(30))
    lo, hi, mean = (pruning_scores(m, "fisher_linear", r) for r in ("min", "max", "mean"))
    assert torch.all(lo <= mean) and torch.all(mean <= hi)
    with pytest.raises(ValueError, match="reduction"):
        pruning_scores(m, "fisher", "median")
    one = net()
    with pytest.raises(ValueError, match="at least 2"):
        channel_scores(one, prunable_layers(one), "discedit", [(torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))], 3)
    with pytest.raises(ValueError, match="zero width"):
        model = net()
        prune_channels(model, torch.zeros(1, 1, 8, 8), channel_scores(model, prunable_layers(model), "l1"), 0.95)
    assert model[0].out_channels == 8  # untouched after the error
