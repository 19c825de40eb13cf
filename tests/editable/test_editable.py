"""Editable Training: editors, metrics and EditableModule on the real 8x8 digits."""

from __future__ import annotations

import functools
import math

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
    module = EditableModule(SmallCNN(1, 10, widths=(4, 8), hidden=8),
                            editor=GradientEditor(lr=0.1, method="rmsprop", max_steps=3, learn_lr=True), editable_parameters=LAST)
    x = torch.randn(8, 1, 8, 8)
    edit_term, locality = module.edit_losses(x)
    (edit_term + locality).backward()
    for p in (module.editor.lr_logit, module.editor.beta_logit):  # only reachable through the steps
        assert p.grad is not None and p.grad.abs() > 0
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
    with pytest.raises(ValueError, match="learn_beta=True needs method"):
        GradientEditor(method="sgd", learn_beta=True)
    with pytest.raises(ValueError, match="inside lr_bounds"):
        GradientEditor(lr=2.0, learn_lr=True, lr_bounds=(1e-4, 1.0))
    with pytest.raises(ValueError, match="0 < beta < 1"):
        GradientEditor(beta=1.0)
    with pytest.raises(ValueError, match="inner block"):
        EditableModule(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    with pytest.raises(ValueError, match="'auto' or None"):
        EditableModule(SmallCNN(1, 10), editable_parameters="hidden.*")
    with pytest.raises(ValueError, match="max_grad_norm"):
        EditableModule(SmallCNN(1, 10), max_grad_norm=0.0)


def test_options_that_could_not_take_effect_are_errors():
    with pytest.raises(ValueError, match=r"would ignore momentum=0.5 \(read by method 'momentum'"):
        GradientEditor(method="rmsprop", momentum=0.5)
    with pytest.raises(ValueError, match=r"would ignore beta=0.9 .*; eps=0.001"):
        GradientEditor(method="sgd", beta=0.9, eps=1e-3)
    with pytest.raises(ValueError, match=r"lr_bounds=\(1e-05, 1.0\) \(bounds a learned lr"):
        GradientEditor(learn_lr=False, lr_bounds=(1e-5, 1.0))
    GradientEditor(method="adam", momentum=0.8, beta=0.9, eps=1e-8)  # adam reads all three
    GradientEditor(method="momentum", momentum=0.5)
    GradientEditor(learn_lr=True, lr_bounds=(1e-5, 1.0))
    with pytest.raises(ValueError, match="locality_coef=0 turns off"):
        EditableModule(SmallCNN(1, 10), locality_coef=0.0, locality_reference="eval")
    with pytest.raises(ValueError, match="edit_coef = locality_coef = 0 makes none"):
        EditableModule(SmallCNN(1, 10), edit_coef=0.0, locality_coef=0.0, edits_per_step=4)
    with pytest.raises(ValueError, match="train_edit_steps must be >= 1"):
        EditableModule(SmallCNN(1, 10), train_edit_steps=0)
    with pytest.raises(ValueError, match="val_drawdown_batches >= 1"):
        EditableModule(SmallCNN(1, 10), val_drawdown_batches=0)
    EditableModule(SmallCNN(1, 10), val_edits=0, val_drawdown_batches=0)  # no validation edits: nothing to read
    own = GradientEditor(editable_parameters=["classifier.*"])
    with pytest.raises(ValueError, match="the module's would win silently"):
        EditableModule(SmallCNN(1, 10), editor=own, editable_parameters=["hidden.*"])
    assert EditableModule(SmallCNN(1, 10), editor=own).editable_parameters == ["classifier.*"]  # "auto" defers to it
    assert EditableModule(SmallCNN(1, 10), editor=own, editable_parameters=["classifier.*"]).editable_parameters == ["classifier.*"]


def test_editable_module_trains_logs_edit_metrics_and_edits(tmp_path):
    L.seed_everything(0)
    module = EditableModule(SmallCNN(1, 10), optimizer=functools.partial(torch.optim.Adam, lr=3e-3),
                            editor=GradientEditor(lr=0.1, method="sgd", max_steps=5), editable_parameters=LAST,
                            edit_coef=0.1, locality_coef=0.1, val_edits=4, val_drawdown_batches=2)
    trainer = L.Trainer(max_epochs=2, limit_train_batches=6, limit_val_batches=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    dm = DigitsDataModule(batch_size=3)  # the 4 validation edits span the 2 cached batches
    trainer.fit(module, dm)
    for key in ("edit/success_rate", "edit/mean_steps", "edit/drawdown", "train_edit_loss", "train_locality_loss"):
        assert key in trainer.callback_metrics
    assert module.last_edit_metrics.num_edits == 4
    x = dm.test_set.x[:1]
    target = (module(x).argmax(1) + 1) % 10
    edited, result = module.edit(x, target, max_steps=50)
    assert result.success and edited(x).argmax(1).item() == target.item()


def test_authors_defaults_and_inner_block():
    from lightning_edit.editable import default_editable_parameters
    from lightning_edit.models import VGG, resnet20

    editor = GradientEditor()
    assert editor.method == "rmsprop" and editor.max_steps == 10 and editor.eps == 1e-6
    assert float(editor.lr) == pytest.approx(1e-3) and editor.learn_lr and editor.lr_bounds == (1e-7, 10.0)
    assert editor.beta_logit.requires_grad and float(editor.beta) == pytest.approx(0.5)
    assert not GradientEditor(method="sgd").beta_logit.requires_grad
    assert default_editable_parameters(resnet20(in_channels=1)) == ["layer3.*"]
    assert default_editable_parameters(SmallCNN(1, 10)) == ["hidden.*"]
    vgg = VGG("vgg11", in_channels=1, num_classes=10, width_multiplier=0.25, max_pools=4)
    last_conv = [n for n, m in vgg.features.named_children() if isinstance(m, nn.Conv2d)][-1]
    assert default_editable_parameters(vgg) == [f"features.{last_conv}.*", f"features.{int(last_conv) + 1}.*"]
    module = EditableModule(SmallCNN(1, 10))
    assert module.editable_parameters == ["hidden.*"] and module.edit_coef == module.locality_coef == 0.01
    assert module.max_grad_norm == 10.0


def test_metrics_match_a_hand_computed_case():
    """logits = x + b, only b edited, SGD lr 0.3, k = 2: each step moves z1 - z0 by 1.2 ... by 0.6."""
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
        model.bias.zero_()
    test_x = torch.tensor([[2.0, 0.0], [1.0, 0.5], [0.0, 1.0], [0.5, 0.0], [3.0, 0.0], [1.1, 0.0]])
    test_y = torch.tensor([0, 0, 1, 1, 1, 0])  # base: [0.5, 0] and [3, 0] wrong -> 2/6
    edit_x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 0.0]])
    edit_y = torch.tensor([1, 1, 1])
    # edit 1: gap 1.0 -> 0.4 -> -0.2, success in 2 steps, b = (-0.6, 0.6): [1, .5] and [1.1, 0] turn wrong,
    #         [.5, 0] turns right -> error 3/6; edit 2 already holds: 0 steps, error 2/6;
    # edit 3: gap 5.0 -> 3.8 after the 2 allowed steps: failure, 2 steps, same b as edit 1 -> error 3/6.
    m = evaluate_edits(model, GradientEditor(lr=0.3, max_steps=2, method="sgd"), edit_x, edit_y, [(test_x, test_y)], ["bias"])
    assert m.base_error == pytest.approx(2 / 6)
    assert m.success_rate == pytest.approx(2 / 3) and m.mean_steps == pytest.approx(4 / 3)
    assert m.drawdown == pytest.approx(1 / 9) and m.drawdown_p90 == pytest.approx(1 / 6)
    assert m.drawdowns == pytest.approx((1 / 6, 0.0, 1 / 6)) and m.num_edits == 3 and m.median_latency_s > 0
    assert torch.equal(model.bias, torch.zeros(2))  # every edit starts from the original model


def test_rmsprop_with_learned_lr_stays_finite_and_bounded():
    """A few hundred editable-training steps with the second-order RMSProp path and a learned lr."""
    L.seed_everything(0)
    bounds = (1e-4, 0.1)
    editor = GradientEditor(lr=1e-2, method="rmsprop", learn_lr=True, lr_bounds=bounds)
    module = EditableModule(SmallCNN(1, 10), editor=editor, edit_coef=0.1, locality_coef=0.1, val_edits=0)
    losses: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(max_steps=300, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[Record()])
    trainer.fit(module, DigitsDataModule(batch_size=32))
    assert len(losses) == 300 and all(map(math.isfinite, losses))
    assert all(torch.isfinite(p).all() for p in module.parameters())
    lr = float(editor.lr)
    assert bounds[0] * 1.01 < lr < bounds[1] / 1.01 and lr != pytest.approx(1e-2, rel=1e-3)  # learned, not pinned
    assert sum(losses[-20:]) < sum(losses[:20])


def test_default_gradient_clip_is_the_authors_norm_10(monkeypatch):
    module = EditableModule(SmallCNN(1, 10), val_edits=0)
    seen = []
    monkeypatch.setattr(module, "clip_gradients", lambda opt, val, algo: seen.append((val, algo)))
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, DigitsDataModule(batch_size=32))
    assert seen == [(10.0, "norm")]


def test_update_norm_clip_bounds_each_step_and_keeps_second_order_gradients_finite():
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
        model.bias.zero_()
    editor = GradientEditor(lr=10.0, max_steps=3, method="sgd", learn_lr=True, lr_bounds=(1e-3, 100.0), max_update_norm=0.05)
    edited, result = editor.edit(model, torch.tensor([[1.0, 0.0]]), torch.tensor([1]), ["bias"])
    assert result.steps == 3 and not result.success  # the unclipped first step (norm 14) would have succeeded
    assert torch.linalg.vector_norm(edited.bias - model.bias) <= 3 * 0.05 + 1e-6
    # an edit that already holds: every update is 0, the clip's norm is 0, and the outer gradient stays finite
    params = {"bias": model.bias}
    x, target = torch.tensor([[0.0, 1.0]]), torch.tensor([1])
    new, _, _ = editor.run(params, lambda ps: edit_loss(torch.func.functional_call(model, ps, (x,)), target),
                           create_graph=True, early_stop=False)
    torch.func.functional_call(model, new, (x,)).sum().backward()
    assert torch.isfinite(model.bias.grad).all() and torch.isfinite(editor.lr_logit.grad).all()


def test_evaluate_edits_refuses_parameters_another_editor_would_ignore():
    from lightning_edit.edit import FineTuneEditor

    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="parameters=None"):
        evaluate_edits(model, FineTuneEditor(), torch.zeros(1, 2), torch.tensor([1]), [(torch.zeros(2, 2), torch.tensor([0, 1]))],
                       ["bias"])
