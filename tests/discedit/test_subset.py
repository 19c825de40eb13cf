"""Class-subset specialisation on real digits: the head keeps the chosen rows in order, bounds are one-vs-rest within
the subset, the checkpoint reloads, and bad class lists are errors before anything changes."""

from __future__ import annotations

import copy

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_edit import ClassifierModule
from lightning_edit.callbacks import DiscEditPruning
from lightning_edit.data import DigitsDataModule
from lightning_edit.discedit import (
    channel_scores,
    enable_edit_reload,
    keep_classes,
    prunable_layers,
    prune_channels,
    select_and_prune,
    subset_batches,
)
from lightning_edit.discedit.structured import pruning_record
from lightning_edit.models import SmallCNN
from tests.conftest import make_trainer

CLASSES = [8, 3, 5]  # not sorted: output j is class CLASSES[j]


def batches(dm, split="train", n=4):
    ds = getattr(dm, f"{split}_set")
    return list(zip(ds.x[: n * 128].split(128), ds.y[: n * 128].split(128)))


def test_head_keeps_the_rows_in_the_order_given(trained_digits):
    module, dm = trained_digits
    model = copy.deepcopy(module.model).eval()
    x = dm.test_set.x[:64]
    before = model(x)
    keep_classes(model, CLASSES)
    torch.testing.assert_close(model(x), before[:, CLASSES], rtol=1e-5, atol=1e-5)  # a narrower matmul rounds differently


def test_bounds_are_one_vs_rest_within_the_subset(trained_digits):
    module, dm = trained_digits
    model = copy.deepcopy(module.model).eval()
    layers = prunable_layers(model)
    data = batches(dm)
    via_option = channel_scores(model, layers, "discedit", data, 10, classes=CLASSES)
    by_hand = channel_scores(model, layers, "discedit", list(subset_batches(data, CLASSES)), len(CLASSES))
    full = channel_scores(model, layers, "discedit", data, 10)
    for name in layers:
        torch.testing.assert_close(via_option[name], by_hand[name])
    assert any(not torch.allclose(via_option[n], full[n]) for n in layers)  # the subset changes the ranking input


@pytest.mark.parametrize("importance", ["discedit", "taylor", "bn_scale"])
def test_prune_channels_specialises_and_reloads(trained_digits, importance):
    module, dm = trained_digits
    model = enable_edit_reload(copy.deepcopy(module.model).eval())
    layers = prunable_layers(model)
    data = batches(dm)
    scores = channel_scores(model, layers, importance, data, 10, classes=CLASSES, example_input=data[0][0][:1])
    prune_channels(model, data[0][0][:1], scores, 0.3, layers, classes=CLASSES, recalibration_batches=data)
    x, y = next(subset_batches([(dm.test_set.x, dm.test_set.y)], CLASSES))
    model.eval()
    out = model(x)
    assert out.shape == (len(x), 3)
    assert (out.argmax(1) == y).float().mean() > 0.8  # three classes: chance is 1/3
    assert pruning_record(model)["classes"] == CLASSES
    fresh = enable_edit_reload(SmallCNN(1, 10)).eval()
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh(x), out, rtol=0, atol=0)


def test_select_and_prune_with_classes(trained_digits):
    module, dm = trained_digits
    pruned, report = select_and_prune(module.model, torch.zeros(1, 1, 8, 8), batches(dm), batches(dm, "val", 2), 0.5,
                                      candidates=["discedit", "bn_scale"], classes=CLASSES)
    assert pruned(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    assert module.model.classifier.out_features == 10  # the input model is untouched
    assert set(report.table) == {"discedit", "bn_scale"}


@pytest.mark.parametrize("classes, match", [([3], "at least 2"), ([3, 3], "duplicates"), ([3, 12], "outside")])
def test_bad_classes_are_errors_before_the_model_changes(trained_digits, classes, match):
    module, dm = trained_digits
    model = copy.deepcopy(module.model)
    state = copy.deepcopy(model.state_dict())
    data = batches(dm, n=1)
    with pytest.raises(ValueError, match=match):
        prune_channels(model, data[0][0][:1], {n: torch.rand(m.weight.shape[0]) for n, m in prunable_layers(model).items()},
                       0.5, classes=classes)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_callback_arguments_are_checked_at_construction():
    with pytest.raises(ValueError, match="at least 2"):
        DiscEditPruning(classes=[1], prune_epoch="start")
    with pytest.raises(ValueError, match="prune_epoch='start'"):
        DiscEditPruning(classes=[1, 2], prune_epoch=0)


def test_relabelled_datamodule():
    dm = DigitsDataModule(classes=CLASSES, relabel=True, val_size=100)
    dm.setup()
    raw = DigitsDataModule(classes=CLASSES, val_size=100)
    raw.setup()
    assert sorted(dm.train_set.y.unique().tolist()) == [0, 1, 2]
    assert torch.equal(torch.tensor(CLASSES)[dm.train_set.y], raw.train_set.y)
    with pytest.raises(ValueError, match="give classes"):
        DigitsDataModule(relabel=True)


def test_callback_specialises_a_trained_model_and_the_checkpoint_reloads(tmp_path, trained_digits):
    trained, _ = trained_digits
    module = copy.deepcopy(trained)
    dm = DigitsDataModule(classes=CLASSES, relabel=True)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    cb = DiscEditPruning(sparsity=0.5, prune_epoch="start", calibration_batches=4, plot=False, classes=CLASSES,
                         importance="auto", candidates=["discedit", "bn_scale"])
    make_trainer(tmp_path, [cb, ckpt], max_epochs=1, limit_train_batches=4, enable_checkpointing=True).fit(
        module, datamodule=dm)
    assert module.model.classifier.out_features == 3
    assert cb.events[0]["acc_after"] > 0.8
    x = dm.test_set.x[:32]
    module.eval()
    reloaded = ClassifierModule.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt", model=SmallCNN(1, 10)).eval()
    assert pruning_record(reloaded)["classes"] == CLASSES
    torch.testing.assert_close(reloaded(x), module(x), rtol=0, atol=0)
