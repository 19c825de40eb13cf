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
