"""Editable Training: editors, metrics and EditableModule on the real 8x8 digits."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from torch import nn

from lightning_edit import EditableModule
from lightning_edit.data import DigitsDataModule
from lightning_edit.editable import GradientEditor, drawdown, edit_loss, evaluate_edits
from lightning_edit.models import SmallCNN

LAST = ["hidden.*", "classifier.*"]


@pytest.fixture(scope="module")
def trained(trained_digits):
    module, dm = trained_digits
    return module.model, dm


def test_edit_loss_is_zero_iff_target_is_argmax():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    loss = edit_loss(logits, torch.tensor([0, 2]))
    assert loss[0] == 0
    torch.testing.assert_close(loss[1], torch.tensor(2.0))


@pytest.mark.parametrize("method", ["sgd", "momentum", "rmsprop", "adam"])
def test_edit_succeeds_and_leaves_original_untouched(trained, method):
    model, dm = trained
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = dm.test_set.x[:1]
    target = (model(x).argmax(1) + 1) % 10
    lr = {"sgd": 0.5, "momentum": 0.2, "rmsprop": 0.02, "adam": 0.02}[method]
    edited, result = GradientEditor(lr=lr, max_steps=20, method=method).edit(model, x, target, LAST)
    assert result.success and 1 <= result.steps <= 20 and result.loss == 0.0
    assert edited(x).argmax(1).item() == target.item()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(edited.features[0].weight, model.features[0].weight)  # only LAST changed
    assert not torch.equal(edited.classifier.weight, model.classifier.weight)


def test_batched_edit_and_step_limit(trained):
    model, dm = trained
    x = dm.test_set.x[:4]
    target = (model(x).argmax(1) + 3) % 10
    edited, result = GradientEditor(lr=0.05, max_steps=50, method="adam").edit(model, x, target, LAST)
    assert result.success and torch.equal(edited(x).argmax(1), target)
    _, limited = GradientEditor(lr=1e-6, max_steps=2, method="sgd").edit(model, x, target, LAST)
    assert limited.steps == 2 and not limited.success
    _, noop = GradientEditor().edit(model, x, model(x).argmax(1), LAST)
    assert noop.steps == 0 and noop.success


def test_drawdown_on_a_hand_made_case():
    assert drawdown(0.10, [0.20, 0.30, 0.10]) == pytest.approx(0.10)

    class Fixed(nn.Module):  # predicts class 0 for every input; one bias decides it
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.tensor([1.0, 0.0]))

        def forward(self, x):
            return self.bias.expand(len(x), 2)

    x = torch.zeros(4, 1)
    y = torch.tensor([0, 0, 0, 1])  # base error 0.25
    metrics = evaluate_edits(Fixed(), GradientEditor(lr=1.0, max_steps=10, method="sgd"), x[:1], torch.tensor([1]), [(x, y)])
    # the edit makes every prediction class 1: error 0.75, drawdown 0.5
    assert metrics.base_error == 0.25 and metrics.success_rate == 1.0 and metrics.drawdown == pytest.approx(0.5)
    assert metrics.mean_steps == 1


def test_edit_gradient_flows_through_the_editor_steps():
    torch.manual_seed(0)
    module = EditableModule(SmallCNN(1, 10, widths=(4, 8), hidden=8), editor=GradientEditor(lr=0.1, method="sgd", max_steps=3),
                            editable_parameters=LAST)
    x = torch.randn(8, 1, 8, 8)
    edit_term, locality = module.edit_losses(x)
    (edit_term + locality).backward()
    assert module.editor.log_lr.grad is not None and module.editor.log_lr.grad.abs() > 0  # only reachable through the steps
    assert module.model.classifier.weight.grad.abs().sum() > 0
    assert module.model.features[0].weight.grad.abs().sum() > 0  # non-edited params too: the edit loss depends on them


def test_bad_input(trained):
    model, dm = trained
    ed = GradientEditor()
    with pytest.raises(ValueError, match="outside the classes"):
        ed.edit(model, dm.test_set.x[:1], torch.tensor([10]))
    with pytest.raises(ValueError, match="empty"):
        ed.edit(model, dm.test_set.x[:0], torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="match nothing"):
        EditableModule(SmallCNN(1, 10), editable_parameters=["layer3.*"])
    frozen = SmallCNN(1, 10)
    frozen.classifier.requires_grad_(False)
    with pytest.raises(ValueError, match="requires grad"):
        EditableModule(frozen, editable_parameters=["classifier.*"])
    with pytest.raises(ValueError, match="lr > 0"):
        GradientEditor(lr=0.0)


def test_editable_module_trains_logs_edit_metrics_and_edits(tmp_path):
    L.seed_everything(0)
    module = EditableModule(SmallCNN(1, 10), optimizer=functools.partial(torch.optim.Adam, lr=3e-3),
                            editor=GradientEditor(lr=0.1, method="sgd", max_steps=5), editable_parameters=LAST,
                            edit_coef=0.1, locality_coef=0.1, val_edits=4, val_drawdown_batches=2)
    trainer = L.Trainer(max_epochs=2, limit_train_batches=6, limit_val_batches=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    dm = DigitsDataModule()
    trainer.fit(module, dm)
    for key in ("edit/success_rate", "edit/mean_steps", "edit/drawdown", "train_edit_loss", "train_locality_loss"):
        assert key in trainer.callback_metrics
    x = dm.test_set.x[:1]
    target = (module(x).argmax(1) + 1) % 10
    edited, result = module.edit(x, target, max_steps=50)
    assert result.success and edited(x).argmax(1).item() == target.item()
