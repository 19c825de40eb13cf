"""Unlearning evaluation on the real digits: MIA efficacy, relearn time, durability, and their errors."""

from __future__ import annotations

import pytest
import torch

from lightning_edit.discedit import unlearn
from lightning_edit.unlearning import (
    attack_signal,
    durability,
    forget_remaining_accuracy,
    mia_efficacy,
    relearn_steps,
    subsample,
)

FORGET = [3]


@pytest.fixture(scope="module")
def setting(trained_residual_digits):
    module, dm = trained_residual_digits
    train, val, test = (dm.train_set.x, dm.train_set.y), (dm.val_set.x, dm.val_set.y), (dm.test_set.x, dm.test_set.y)
    calib = list(zip(train[0][:1024].split(64), train[1][:1024].split(64)))
    edited, _ = unlearn(module, calib, FORGET)
    return module, edited, train, val, test


def test_mia_efficacy_separates_the_original_from_the_unlearned(setting):
    module, edited, train, val, _ = setting
    sets = (subsample(train, FORGET, exclude=True), subsample(val, FORGET, exclude=True), subsample(train, FORGET))
    before = mia_efficacy(module, *sets)
    after = mia_efficacy(edited, *sets)
    # the original model is as confident on the class's training samples as on every member: most look like members
    assert before < 0.35, before
    assert after > 0.9, after
    assert 0.0 <= mia_efficacy(edited, *sets, signal="entropy") <= 1.0


def test_relearn_steps_and_durability(setting):
    module, edited, train, val, test = setting
    relearn_from = subsample(train, FORGET, 32, generator=torch.Generator().manual_seed(0))
    forget_val = subsample(val, FORGET)
    assert relearn_steps(module, relearn_from, forget_val, FORGET) == 0  # never forgot
    steps = relearn_steps(edited, relearn_from, forget_val, FORGET, max_steps=100)
    assert steps is not None and steps >= 2
    assert relearn_steps(edited, relearn_from, forget_val, FORGET, max_steps=1, lr=1e-9) is None
    remaining = list(zip(*[t.split(64) for t in subsample(train, FORGET, exclude=True)]))
    after = durability(edited, remaining, test, FORGET, epochs=2)
    assert len(after) == 2 and max(after) <= 0.1, after
    # the functions train copies: the edited model's own predictions are unchanged
    f, _ = forget_remaining_accuracy(edited, test, FORGET)
    assert f <= 0.1


def test_bad_input(setting):
    module, _, train, val, test = setting
    with pytest.raises(ValueError, match="signal must be one of"):
        attack_signal(torch.full((2, 3), 1 / 3), torch.tensor([0, 1]), "loss")
    with pytest.raises(ValueError, match="0 < target <= 1"):
        relearn_steps(module, subsample(train, FORGET, 4), val, FORGET, target=0.0)
    with pytest.raises(ValueError, match="contain samples of the forget classes"):
        durability(module, [(train[0][:64], train[1][:64])], test, FORGET)
    with pytest.raises(ValueError, match="both the forget classes and the remaining"):
        forget_remaining_accuracy(module, subsample(test, FORGET), FORGET)
