"""Checkpoints never carry a score measured on another model; edit epochs that cannot run, non-finite
statistics and empty calibration data are clear errors before anything changes; a trained checkpoint can be
edited at the start of a fit."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_edit import ClassifierModule
from lightning_edit.callbacks import DiscEditPruning, DiscEditUnlearning
from lightning_edit.data import DigitsDataModule
from lightning_edit.models import SmallCNN

from tests.conftest import make_trainer


def small() -> SmallCNN:
    return SmallCNN(1, 10, widths=(16, 32), hidden=32)


def module(**kw) -> ClassifierModule:
    return ClassifierModule(small(), optimizer=functools.partial(torch.optim.Adam, lr=3e-3), **kw)


def fit_with_best_checkpoint(tmp_path, edit, max_epochs: int):
    L.seed_everything(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_acc", mode="max", save_top_k=2, save_last=True)
    trainer = make_trainer(tmp_path, [edit, ckpt], max_epochs=max_epochs, enable_checkpointing=True,
                           limit_train_batches=6)
    trainer.fit(module(), datamodule=DigitsDataModule(batch_size=64))
    return trainer, ckpt


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].nan_to_num(), b[k].nan_to_num()) for k in a)


def reloaded_val_acc(tmp_path, path: str) -> tuple[float, ClassifierModule]:
    fresh = ClassifierModule.load_from_checkpoint(path, model=small())
    metrics = make_trainer(tmp_path).validate(fresh, datamodule=DigitsDataModule(batch_size=64), verbose=False)
    return metrics[0]["val_acc"], fresh


@pytest.mark.parametrize("edit, last_edit_epoch, is_edited", [
    (lambda: DiscEditPruning(sparsity=0.75, prune_epoch=1, calibration_batches=4, plot=False), 1,
     lambda m: m.model.features[0].out_channels == 4),
    (lambda: DiscEditPruning(sparsity=0.75, prune_epoch=1, end_epoch=2, calibration_batches=4, plot=False), 2,
     lambda m: m.model.features[0].out_channels == 4),
    (lambda: DiscEditUnlearning([3], ratio=0.5, unlearn_epoch=1, finetune_epochs=2, calibration_batches=4,
                                layers=["model.features.4", "model.hidden"], plot=False), 1,
     lambda m: hasattr(m.model.hidden, "weight_mask")),
], ids=["prune-one-shot", "prune-gradual", "unlearn"])
def test_best_checkpoint_score_is_the_score_of_the_model_it_holds(tmp_path, edit, last_edit_epoch, is_edited):
    trainer, ckpt = fit_with_best_checkpoint(tmp_path, edit(), max_epochs=4)
    assert ckpt.best_model_path and ckpt.best_k_models
    for path, score in ckpt.best_k_models.items():
        acc, fresh = reloaded_val_acc(tmp_path, path)
        assert acc == pytest.approx(float(score), abs=1e-6)
        assert is_edited(fresh)  # every ranked checkpoint holds the edited model
        assert torch.load(path, weights_only=False)["epoch"] >= last_edit_epoch
    acc, fresh = reloaded_val_acc(tmp_path, ckpt.best_model_path)
    assert acc == pytest.approx(float(ckpt.best_model_score), abs=1e-6)
    on_disk = {p.name for p in (tmp_path / "ckpt").glob("*.ckpt")} - {"last.ckpt"}
    assert on_disk == {Path(p).name for p in ckpt.best_k_models}  # pre-edit top-k files were removed


def test_edit_happens_before_that_epochs_validation(tmp_path):
    cb = DiscEditPruning(sparsity=0.75, prune_epoch=1, calibration_batches=4, plot=False)
    trainer, _ = fit_with_best_checkpoint(tmp_path, cb, max_epochs=2)
    # The validation of the pruning epoch measured the pruned model: the same number as the callback's own
    # measurement right after the prune (full validation set both times, eval mode, no training in between).
    assert float(trainer.callback_metrics["val_acc"]) == pytest.approx(cb.events[0]["acc_after"], abs=1e-6)


@pytest.mark.parametrize("make, message", [
    (lambda: DiscEditPruning(prune_epoch=3, plot=False), "prune_epoch=3"),
    (lambda: DiscEditPruning(prune_epoch=1, end_epoch=5, plot=False), "end_epoch=5"),
    (lambda: DiscEditUnlearning([3], unlearn_epoch=3, plot=False), "unlearn_epoch=3"),
    (lambda: DiscEditUnlearning([3], unlearn_epoch=2, finetune_epochs=1, plot=False), "finetune_epochs=1"),
])
def test_edit_epoch_past_max_epochs_is_an_error_at_setup(tmp_path, make, message):
    m = module()
    before = copy.deepcopy(m.state_dict())
    with pytest.raises(ValueError, match="max_epochs=3") as err:
        make_trainer(tmp_path, [make()], max_epochs=3).fit(m, datamodule=DigitsDataModule(batch_size=64))
    assert message in str(err.value)
    assert same_state(before, m.state_dict())


def test_step_bounded_run_is_not_checked_against_epochs(tmp_path):
    cb = DiscEditPruning(prune_epoch=5, plot=False, evaluate=False)
    make_trainer(tmp_path, [cb], max_epochs=-1, max_steps=3).fit(module(), datamodule=DigitsDataModule(batch_size=64))
    assert not cb.events  # ran 3 steps, no error: the run is bounded by steps, not epochs


@pytest.mark.parametrize("make", [
    lambda: DiscEditPruning(sparsity=0.5, prune_epoch="start", plot=False),
    lambda: DiscEditUnlearning([3], ratio=0.2, layers=None, unlearn_epoch="start", finetune_epochs=1, plot=False),
], ids=["prune", "unlearn"])
def test_non_finite_statistics_are_an_error_naming_the_layer(tmp_path, make):
    m = module()
    with torch.no_grad():
        m.model.features[4].weight[0, 0, 0, 0] = float("nan")
    before = copy.deepcopy(m.state_dict())
    with pytest.raises(ValueError, match=r"Non-finite.*'model\.features\.4'"):
        make_trainer(tmp_path, [make()], max_epochs=1).fit(m, datamodule=DigitsDataModule(batch_size=64))
    assert same_state(before, m.state_dict())


def test_empty_calibration_loader_is_a_clear_error(tmp_path):
    x, y = torch.randn(64, 1, 8, 8), torch.arange(64) % 10
    train = DataLoader(TensorDataset(x, y), batch_size=16)
    empty = DataLoader(TensorDataset(x[:0], y[:0]), batch_size=16)
    m = module()
    before = copy.deepcopy(m.state_dict())
    cb = DiscEditPruning(prune_epoch=0, calibration_source="val", plot=False)
    with pytest.raises(ValueError, match="val dataloader yields no batch"):
        make_trainer(tmp_path, [cb], max_epochs=1).fit(m, train_dataloaders=train, val_dataloaders=empty)
    assert same_state(before, m.state_dict())


def test_bad_epoch_arguments_fail_at_construction():
    with pytest.raises(ValueError, match="prune_epoch must be"):
        DiscEditPruning(prune_epoch="end")
    with pytest.raises(ValueError, match="drop end_epoch"):
        DiscEditPruning(prune_epoch="start", end_epoch=3)
    with pytest.raises(ValueError, match="finetune_epochs >= 1"):
        DiscEditUnlearning([3], unlearn_epoch="start")


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    L.seed_everything(0)
    m = module()
    trainer = make_trainer(tmp_path_factory.mktemp("trained"), max_epochs=6)
    dm = DigitsDataModule(batch_size=64)
    trainer.fit(m, datamodule=dm)
    path = tmp_path_factory.mktemp("ckpt") / "trained.ckpt"
    trainer.save_checkpoint(path)
    return str(path), trainer.validate(m, datamodule=dm, verbose=False)[0]["val_acc"]


def test_unlearn_a_trained_checkpoint_at_start(tmp_path, trained_checkpoint):
    path, trained_acc = trained_checkpoint
    cb = DiscEditUnlearning([3], ratio=0.2, unlearn_epoch="start", finetune_epochs=1, calibration_batches=8,
                            layers=["model.features.4", "model.hidden"], plot=False)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_acc", mode="max")
    trainer = make_trainer(tmp_path, [cb, ckpt], max_epochs=5, enable_checkpointing=True)
    m = module(weights=path)
    trainer.fit(m, datamodule=DigitsDataModule(batch_size=64))
    assert cb.report["retain_acc_before"] > 0.9 and trained_acc > 0.9  # the trained weights were loaded
    assert cb.report["forget_acc_after_ft"] < 0.1
    assert trainer.current_epoch == 1  # fine-tuned one epoch, then stopped (max_epochs was 5)
    acc, fresh = reloaded_val_acc(tmp_path, ckpt.best_model_path)
    assert acc == pytest.approx(float(ckpt.best_model_score), abs=1e-6)
    assert hasattr(fresh.model.hidden, "weight_mask")
    assert "weights" not in fresh.hparams  # the edited checkpoint does not point back to the trained one


def test_prune_a_trained_checkpoint_at_start(tmp_path, trained_checkpoint):
    path, _ = trained_checkpoint
    cb = DiscEditPruning(sparsity=0.5, prune_epoch="start", calibration_batches=8, plot=False)
    trainer = make_trainer(tmp_path, [cb], max_epochs=1)
    m = module(weights=path)
    trainer.fit(m, datamodule=DigitsDataModule(batch_size=64))
    assert cb.events[0]["at_start"] and cb.events[0]["acc_before"] > 0.9
    assert m.model.features[0].out_channels == 8


def test_start_edit_after_resume_checks_the_restored_epoch(tmp_path, trained_checkpoint):
    path, _ = trained_checkpoint  # saved at the end of epoch 5: a resumed fit starts at epoch 6
    cb = DiscEditUnlearning([3], unlearn_epoch="start", finetune_epochs=1, plot=False)
    m = module()
    with pytest.raises(ValueError, match="resumed at epoch 6 with max_epochs=6"):
        make_trainer(tmp_path, [cb], max_epochs=6).fit(m, datamodule=DigitsDataModule(batch_size=64), ckpt_path=path)
    assert not hasattr(m.model.hidden, "weight_mask")


def test_weights_argument_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        module(weights=str(tmp_path / "missing.ckpt"))
    torch.save(SmallCNN(1, 10).state_dict(), tmp_path / "other.pt")
    with pytest.raises(RuntimeError, match="do not fit"):
        module(weights=str(tmp_path / "other.pt"))


def test_best_checkpoint_score_holds_under_bf16_mixed(tmp_path):
    L.seed_everything(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_acc", mode="max")
    edit = DiscEditPruning(sparsity=0.5, prune_epoch=1, calibration_batches=4, plot=False)
    trainer = make_trainer(tmp_path, [edit, ckpt], max_epochs=3, enable_checkpointing=True, limit_train_batches=6,
                           precision="bf16-mixed")
    trainer.fit(module(), datamodule=DigitsDataModule(batch_size=64))
    fresh = ClassifierModule.load_from_checkpoint(ckpt.best_model_path, model=small())
    acc = make_trainer(tmp_path, precision="bf16-mixed").validate(fresh, datamodule=DigitsDataModule(batch_size=64),
                                                                  verbose=False)[0]["val_acc"]
    assert acc == pytest.approx(float(ckpt.best_model_score), abs=1e-6)
    assert fresh.model.features[0].out_channels == 8
