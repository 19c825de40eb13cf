from __future__ import annotations

import copy

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
    for importance, kwargs in (("l1", {"witness": "mpm"}), ("random", {"site": "activation"}),
                               ("tp_l2", {"class_reduction": "max"})):
        with pytest.raises(ValueError, match=f"only change\\(s\\) DISCEDIT's scores; importance='{importance}'"):
            channel_scores(model, prunable_layers(model), importance, **kwargs)


@pytest.mark.parametrize("importance", ["tp_l1", "tp_l2", "taylor", "bn_scale", "lamp"])
def test_torch_pruning_criteria_through_the_callback_give_exact_widths(tmp_path, importance):
    from lightning_edit.callbacks import DiscEditPruning
    from lightning_edit.data import DigitsDataModule
    from tests.conftest import make_module, make_trainer

    cb = DiscEditPruning(sparsity=0.5, prune_epoch=0, importance=importance, calibration_batches=2, plot=False)
    module = make_module()
    make_trainer(tmp_path, [cb], max_epochs=1, limit_train_batches=2).fit(module, datamodule=DigitsDataModule(batch_size=64))
    assert module.model.features[0].out_channels == 8 and module.model.features[4].out_channels == 16


def test_torch_pruning_magnitude_matches_the_filter_norm(trained_digits):
    from lightning_edit.discedit import torch_pruning_scores

    module, dm = trained_digits
    model = module.model
    layers = prunable_layers(model)
    x = dm.test_set.x[:1]
    # Group L1 in torch-pruning averages the |weights| of every coupled weight (conv filter, BN scale, next layer's
    # input slice; biases left out by default) and divides by the group mean: that, computed by hand.
    scores = torch_pruning_scores(model, layers, "tp_l1", x)["features.0"]
    conv, bn, nxt = model.features[0], model.features[1], model.features[4]
    by_hand = conv.weight.abs().flatten(1).sum(1) + bn.weight.abs() + nxt.weight.abs().transpose(0, 1).flatten(1).sum(1)
    by_hand = by_hand / by_hand.mean()
    torch.testing.assert_close(scores, by_hand.double(), rtol=1e-4, atol=1e-6)


def test_taylor_without_batches_names_the_alternatives(trained_digits):
    from lightning_edit.discedit import torch_pruning_scores

    module, dm = trained_digits
    with pytest.raises(ValueError, match="needs gradients of a loss.*'tp_l2'"):
        torch_pruning_scores(module.model, prunable_layers(module.model), "taylor", dm.test_set.x[:1])


def test_activation_site_scores_a_dead_channel_lowest(trained_digits):
    """A channel whose BatchNorm output is always negative is zeroed by ReLU: at the activation site it carries
    nothing (score 0), however its pre-activation varies with the class."""
    module, dm = trained_digits
    model = copy.deepcopy(module.model)
    with torch.no_grad():
        model.features[1].bias[3] = -1e4  # channel 3 of the first block is dead after ReLU
    layers = {"features.0": model.features[0]}
    batches = [(dm.train_set.x[:512], dm.train_set.y[:512])]
    conv = channel_scores(model, layers, "discedit", batches=batches, num_classes=10, site="conv")["features.0"]
    act = channel_scores(model, layers, "discedit", batches=batches, num_classes=10, site="activation")["features.0"]
    assert int(act.argmin()) == 3 and float(act[3]) == 0.0
    assert float(conv[3]) > 0.0


@pytest.mark.parametrize("witness", ["fisher", "mpm", "robust_fisher", "exp_norm"])
def test_scores_of_all_layers_at_once_equal_scores_layer_by_layer(trained_digits, witness):
    """The bounds of all layers are computed as one joint problem; each layer's scores must be those of its own
    moments alone."""
    from lightning_edit.discedit import collect_moments
    from lightning_edit.discedit.scores import get_witness

    module, dm = trained_digits
    layers = prunable_layers(module.model)
    assert len(layers) >= 2
    batches = [(dm.train_set.x[:300], dm.train_set.y[:300]), (dm.train_set.x[300:600], dm.train_set.y[300:600])]
    joint = channel_scores(module.model, layers, "discedit", batches=batches, num_classes=10, witness=witness)
    moments = collect_moments(module.model, layers, batches, 10, get_witness(witness).feature)
    for name in layers:
        alone = pruning_scores(moments[name], witness)
        assert joint[name].shape == alone.shape
        torch.testing.assert_close(joint[name], alone, rtol=1e-9, atol=1e-12)
    first, second = list(moments.values())[:2]
    assert ClassConditionalMoments.cat([first, second]).sum.shape[1] == first.sum.shape[1] + second.sum.shape[1]
    other = ClassConditionalMoments(second.count + 1, second.sum, second.sum_outer)  # other samples: no joint problem
    assert ClassConditionalMoments.cat([first, other]) is None


def test_redundancy_keeps_an_uncorrelated_channel_over_a_copy():
    """mRMR greedy order: the second most relevant channel duplicates the first (ρ = 1), so a less relevant
    uncorrelated one is kept before it; with weight 0 the order is the relevance order."""
    from lightning_edit.discedit import redundancy_adjusted_scores

    relevance = torch.tensor([0.9, 0.85, 0.5], dtype=torch.float64)
    corr = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    scores = redundancy_adjusted_scores(relevance, corr, 1.0)
    assert torch.argsort(scores, descending=True).tolist() == [0, 2, 1]
    assert torch.argsort(redundancy_adjusted_scores(relevance, corr, 0.0), descending=True).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="weight must be >= 0"):
        redundancy_adjusted_scores(relevance, corr, -1.0)


def test_channel_correlations_match_numpy_style_corrcoef(trained_digits):
    from lightning_edit.discedit import channel_correlations

    module, dm = trained_digits
    layers = prunable_layers(module.model)
    x, y = dm.train_set.x[:400], dm.train_set.y[:400]
    got = channel_correlations(module.model, layers, [(x[:150], y[:150]), (x[150:], y[150:])])
    means = {}
    hooks = [m.register_forward_hook(lambda _m, _i, o, n=n: means.__setitem__(n, o.detach().double().flatten(2).mean(-1)
                                                                            if o.ndim == 4 else o.detach().double()))
             for n, m in layers.items()]
    module.model.eval()
    with torch.no_grad():
        module.model(x)
    for h in hooks:
        h.remove()
    for name in layers:
        expected = torch.corrcoef(means[name].T).nan_to_num(0.0)
        torch.testing.assert_close(got[name], expected, rtol=1e-5, atol=1e-6)  # float32 spatial means


def test_redundancy_through_channel_scores_and_its_errors(trained_digits):
    module, dm = trained_digits
    layers = prunable_layers(module.model)
    batches = ((dm.train_set.x[i:i + 200], dm.train_set.y[i:i + 200]) for i in (0, 200))  # a generator: read twice
    plain = channel_scores(module.model, layers, "discedit", batches=[(dm.train_set.x[:400], dm.train_set.y[:400])], num_classes=10)
    mrmr = channel_scores(module.model, layers, "discedit", batches=batches, num_classes=10, redundancy=1.0)
    for name in layers:
        assert mrmr[name].shape == plain[name].shape
        assert int(mrmr[name].argmax()) == int(plain[name].argmax())  # the most relevant channel is kept first
    with pytest.raises(ValueError, match=r"redundancy=1.0 only change\(s\) DISCEDIT's scores"):
        channel_scores(module.model, layers, "l1", redundancy=1.0)
    with pytest.raises(ValueError, match="no global ranking"):
        channel_scores(module.model, layers, "discedit", batches=[(dm.train_set.x[:400], dm.train_set.y[:400])],
                       num_classes=10, redundancy=1.0, normalize=True)
    from lightning_edit.callbacks import DiscEditPruning

    with pytest.raises(ValueError, match="no global ranking"):
        DiscEditPruning(redundancy=1.0, scope="global")
    with pytest.raises(ValueError, match="redundancy must be >= 0"):
        DiscEditPruning(redundancy=-1.0)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_redundancy_through_the_callback_gives_exact_widths(tmp_path, precision):
    from lightning_edit.callbacks import DiscEditPruning
    from lightning_edit.data import DigitsDataModule
    from tests.conftest import make_module, make_trainer

    cb = DiscEditPruning(sparsity=0.5, prune_epoch=0, feature_site="activation", redundancy=1.0, calibration_batches=2,
                         plot=False)
    module = make_module()
    trainer = make_trainer(tmp_path, [cb], max_epochs=1, limit_train_batches=2, precision=precision)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=64))
    assert module.model.features[0].out_channels == 8 and module.model.features[4].out_channels == 16


def _macs(model: nn.Module, x: torch.Tensor) -> int:
    from lightning_edit.discedit import count_macs_params
    return count_macs_params(model, x)[0]


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_macs_budget_is_reached_within_two_percent(scope):
    from lightning_edit.models import SmallCNN
    torch.manual_seed(0)
    model, x = SmallCNN(1, 10, widths=(32, 64), hidden=64), torch.zeros(1, 1, 8, 8)
    dense = _macs(model, x)
    layers = prunable_layers(model)
    scores = {n: torch.rand(m.weight.shape[0], dtype=torch.float64) for n, m in layers.items()}
    prune_channels(model, x, scores, 0.4, layers, sparsity_type="macs", scope=scope, min_channels=1)
    assert 1 - _macs(model, x) / dense == pytest.approx(0.4, abs=0.02)


def test_unknown_sparsity_type_and_unreachable_macs_are_errors_before_the_model_changes():
    model, x = net(), torch.zeros(1, 1, 8, 8)
    before = copy.deepcopy(model.state_dict())
    layers = prunable_layers(model)
    scores = {n: torch.rand(m.weight.shape[0], dtype=torch.float64) for n, m in layers.items()}
    with pytest.raises(ValueError, match="sparsity_type must be one of"):
        prune_channels(model, x, scores, 0.3, layers, sparsity_type="flops")
    with pytest.raises(ValueError, match="the most that channel pruning of these layers removes is"):
        prune_channels(model, x, scores, 0.95, layers, sparsity_type="macs", min_channels=4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_callback_refuses_an_unreachable_macs_budget_at_setup(tmp_path):
    import lightning as L
    from lightning_edit import ClassifierModule
    from lightning_edit.callbacks import DiscEditPruning
    from lightning_edit.data import DigitsDataModule
    from lightning_edit.models import SmallCNN

    cb = DiscEditPruning(sparsity=0.995, sparsity_type="macs", min_channels=4)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        callbacks=[cb], default_root_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"removes at most 0\.\d+ of the MACs"):
        trainer.fit(ClassifierModule(SmallCNN(1, 10)), datamodule=DigitsDataModule())
