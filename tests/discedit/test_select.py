"""Criterion selection on held-out data (select_and_prune) on a SmallCNN trained on the real digits."""

from __future__ import annotations

import copy

import pytest
import torch

from lightning_edit.discedit import (
    CANDIDATES,
    prunable_layers,
    prune_with,
    select_and_prune,
    selection_accuracy,
)


@pytest.fixture(scope="module")
def split(trained_digits):
    module, dm = trained_digits
    calibration = list(dm.train_dataloader())[:6]
    selection = list(dm.val_dataloader())
    return module.model.eval(), calibration, selection


def test_selects_the_best_candidate_on_the_selection_split_and_leaves_the_model_alone(split):
    model, calibration, selection = split
    before = copy.deepcopy(model.state_dict())
    dense = sum(p.numel() for p in model.parameters())
    pruned, report = select_and_prune(model, calibration[0][0][:1], calibration, selection, 0.5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(report.table) == set(CANDIDATES)
    assert report.table[report.importance] == max(report.table.values())
    assert selection_accuracy(pruned, selection) == pytest.approx(report.table[report.importance])
    assert sum(p.numel() for p in pruned.parameters()) == pytest.approx(0.5 * dense, rel=0.05)
    assert all(s > 0 for s in report.seconds.values())
    # the winner is exactly what pruning with that candidate directly gives
    direct = copy.deepcopy(model)
    prune_with(direct, report.importance, calibration[0][0][:1], calibration, 0.5, list(prunable_layers(model)), 10)
    x = selection[0][0]
    with torch.no_grad():
        assert torch.equal(direct.eval()(x).argmax(1), pruned(x).argmax(1))


def test_bad_candidates_and_missing_data_are_errors(split):
    model, calibration, selection = split
    x = calibration[0][0][:1]
    with pytest.raises(ValueError, match="Unknown candidate"):
        select_and_prune(model, x, calibration, selection, 0.5, candidates=["discedit", "magic"])
    with pytest.raises(ValueError, match="at least two"):
        select_and_prune(model, x, calibration, selection, 0.5, candidates=["discedit"])
    with pytest.raises(ValueError, match="duplicates"):
        select_and_prune(model, x, calibration, selection, 0.5, candidates=["tp_l2", "tp_l2"])
    with pytest.raises(ValueError, match="selection_batches is empty"):
        select_and_prune(model, x, calibration, [], 0.5, candidates=["tp_l2", "bn_scale"])


def test_callback_auto_applies_the_candidate_with_the_best_selection_accuracy(tmp_path):
    import lightning as L

    from lightning_edit import ClassifierModule
    from lightning_edit.callbacks import DiscEditPruning
    from lightning_edit.data import DigitsDataModule
    from lightning_edit.models import SmallCNN

    L.seed_everything(0)
    cb = DiscEditPruning(sparsity=0.5, sparsity_type="parameters", prune_epoch=2, importance="auto", min_channels=2,
                         candidates=["discedit", "tp_l2", "bn_scale"], calibration_batches=4)
    trainer = L.Trainer(max_epochs=3, callbacks=[cb], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(ClassifierModule(SmallCNN(1, 10), num_classes=10), DigitsDataModule())
    accs = {n: row["selection_acc"] for n, row in cb.selection.items()}
    assert set(accs) == {"discedit", "tp_l2", "bn_scale"} and cb.chosen == max(accs, key=accs.get)
    # the selection split is the val loader: the applied prune scores exactly what the chosen copy scored
    assert cb.events[0]["acc_after"] == pytest.approx(accs[cb.chosen], abs=1e-6)
    assert all(f"discedit/auto/{n}" in trainer.callback_metrics for n in accs)
    assert cb.state_dict()["chosen"] == cb.chosen


def test_callback_auto_under_bf16_mixed(tmp_path):
    import lightning as L

    from lightning_edit import ClassifierModule
    from lightning_edit.callbacks import DiscEditPruning
    from lightning_edit.data import DigitsDataModule
    from lightning_edit.models import SmallCNN

    L.seed_everything(0)
    cb = DiscEditPruning(sparsity=0.5, prune_epoch=1, importance="auto", candidates=["discedit", "taylor", "bn_scale"],
                         calibration_batches=4, plot=False)
    module = ClassifierModule(SmallCNN(1, 10), num_classes=10)
    L.Trainer(max_epochs=2, callbacks=[cb], logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, default_root_dir=str(tmp_path), precision="bf16-mixed").fit(module,
                                                                                                   DigitsDataModule())
    assert cb.chosen in {"discedit", "taylor", "bn_scale"} and len(cb.selection) == 3
    assert all(0.0 < row["selection_acc"] <= 1.0 for row in cb.selection.values())
    assert module.model.features[0].out_channels == 16
    assert cb.events[0]["acc_after"] == pytest.approx(cb.selection[cb.chosen]["selection_acc"], abs=0.02)
    assert cb.events[0]["acc_after"] > 0.2  # chance is 0.1


def test_callback_auto_bad_input_is_an_error_at_construction():
    from lightning_edit.callbacks import DiscEditPruning

    with pytest.raises(ValueError, match="at least two"):
        DiscEditPruning(importance="auto", candidates=["tp_l2"])
    with pytest.raises(ValueError, match="Unknown candidate"):
        DiscEditPruning(importance="auto", candidates=["tp_l2", "magic"])
    with pytest.raises(ValueError, match="must differ from the calibration data"):
        DiscEditPruning(importance="auto", calibration_source="val")
    with pytest.raises(ValueError, match="read only by importance='auto'"):
        DiscEditPruning(candidates=["tp_l2", "bn_scale"])
    with pytest.raises(ValueError, match="drop scope"):
        DiscEditPruning(importance="auto", scope="global")
