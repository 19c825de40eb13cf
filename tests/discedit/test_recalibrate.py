"""BatchNorm recalibration after a structural edit: offline, in both callbacks, and a no-op without BatchNorm."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from lightning_edit.callbacks import DiscEditPruning, DiscEditUnlearning
from lightning_edit.data import DigitsDataModule
from lightning_edit.discedit import channel_scores, prunable_layers, prune_channels, recalibrate_batchnorm, unlearn
from tests.conftest import make_module, make_trainer


def accuracy(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_recalibration_matches_the_statistics_of_the_data(trained_digits):
    module, dm = trained_digits
    model = copy.deepcopy(module.model)
    batches = [(dm.train_set.x[i:i + 100], dm.train_set.y[i:i + 100]) for i in range(0, 1000, 100)]
    assert recalibrate_batchnorm(model, batches) == 2
    bn = model.features[1]
    with torch.no_grad():
        out = model.features[0](torch.cat([b[0] for b in batches]))
    torch.testing.assert_close(bn.running_mean, out.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert bn.momentum == module.model.features[1].momentum and not model.training  # restored
    with pytest.raises(ValueError, match="no calibration batch"):
        recalibrate_batchnorm(model, [])


def test_recalibration_recovers_accuracy_after_pruning(trained_digits):
    module, dm = trained_digits
    batches = [(dm.train_set.x[i:i + 128], dm.train_set.y[i:i + 128]) for i in range(0, 1024, 128)]
    x, y = dm.test_set.x, dm.test_set.y
    accs = {}
    for recal in (False, True):
        model = copy.deepcopy(module.model)
        layers = prunable_layers(model)
        scores = channel_scores(model, layers, "l1")
        prune_channels(model, x[:1], scores, 0.5, layers, recalibration_batches=batches if recal else None)
        accs[recal] = accuracy(model, x, y)
    assert accs[True] > accs[False] + 0.1, accs


def test_unlearn_offline_recalibration_changes_only_statistics(trained_digits):
    module, dm = trained_digits
    batches = [(dm.train_set.x[i:i + 128], dm.train_set.y[i:i + 128]) for i in range(0, 1024, 128)]
    kwargs = dict(ratio=0.2, layers=["features.4", "hidden"], refit_steps=0)  # the row re-fit reads the statistics
    plain, _ = unlearn(module.model, batches, [3], **kwargs)
    recal, _ = unlearn(module.model, batches, [3], **kwargs, recalibration_batches=batches)
    for (n, p), q in zip(plain.named_parameters(), recal.parameters()):
        assert torch.equal(p, q), n
    assert not torch.equal(plain.features[5].running_var, recal.features[5].running_var)


def test_callback_recalibrates_by_default_and_logs_both_accuracies(tmp_path):
    cb = DiscEditPruning(sparsity=0.5, prune_epoch=0, calibration_batches=4, plot=False)
    make_trainer(tmp_path, [cb], max_epochs=1).fit(make_module(), datamodule=DigitsDataModule(batch_size=64))
    event = cb.events[0]
    assert event["bn_recalibrated"] == 2 and event["acc_after_prune"] is not None
    off = DiscEditPruning(sparsity=0.5, prune_epoch=0, calibration_batches=4, plot=False, recalibrate_bn=False)
    make_trainer(tmp_path, [off], max_epochs=1).fit(make_module(), datamodule=DigitsDataModule(batch_size=64))
    assert off.events[0]["bn_recalibrated"] is None


def test_no_batchnorm_is_a_no_op_with_an_info_line(tmp_path, caplog):
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 10))
    assert recalibrate_batchnorm(net, [torch.zeros(2, 1, 8, 8)]) == 0
    cb = DiscEditPruning(sparsity=0.5, prune_epoch=0, calibration_batches=2, plot=False)
    with caplog.at_level(logging.INFO):
        make_trainer(tmp_path, [cb], max_epochs=1).fit(make_module(net), datamodule=DigitsDataModule(batch_size=64))
    assert cb.events[0]["bn_recalibrated"] == 0
    assert "no BatchNorm layer; recalibrate_bn has nothing to do" in caplog.text


def test_unlearning_callback_recalibration_option(tmp_path):
    """Masked channels output exactly 0, so recalibrated statistics of the next BatchNorm are 0 there; the
    stale ones (recalibrate_bn=False, the default) are not."""
    stats = {}
    for recal in (False, True):
        torch.manual_seed(0)
        cb = DiscEditUnlearning([3], ratio=0.2, unlearn_epoch=0, calibration_batches=4, recalibrate_bn=recal, plot=False,
                                layers=["model.features.4"], evaluate=False)
        m = make_module()
        make_trainer(tmp_path, [cb], max_epochs=1).fit(m, datamodule=DigitsDataModule(batch_size=64))
        masked = cb.report["masked"]["model.features.4"]
        bn = m.model.features[5]
        stats[recal] = (bn.running_mean[masked].abs().max(), bn.running_var[masked].abs().max())
    assert stats[True][0] == 0 and stats[True][1] == 0
    assert stats[False][0] > 0 and stats[False][1] > 0
    with pytest.raises(ValueError, match="recalibration_batches must be"):
        DiscEditPruning(recalibration_batches=0)
