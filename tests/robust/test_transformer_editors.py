"""Every editor and EditableModule on a user's nn.TransformerEncoder classifier (issue 26, item 5)."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch

from lightning_edit import ClassifierModule, EditableModule
from lightning_edit.data import DigitsDataModule
from lightning_edit.edit import make_editor
from lightning_edit.editable import GradientEditor
from lightning_edit.robust.editors import DEFAULT_BUDGET
from tests.conftest import Encoder


@pytest.fixture(scope="module")
def trained():
    L.seed_everything(0)
    dm = DigitsDataModule(batch_size=64)
    dm.setup()
    module = ClassifierModule(Encoder(), optimizer=functools.partial(torch.optim.Adam, lr=3e-3))
    L.Trainer(max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, accelerator="cpu").fit(module, dm)
    model = module.model.eval()
    with torch.no_grad():
        wrong = model(dm.val_set.x).argmax(1) != dm.val_set.y
    x, y = dm.val_set.x[wrong][:4], dm.val_set.y[wrong][:4]
    retain = list(zip(dm.train_set.x[:256].split(64), dm.train_set.y[:256].split(64)))
    return model, x, y, retain


@pytest.mark.parametrize("name, args", [
    ("finetune", {"layers": ["encoder.layers.1.linear2"], "lr": 1e-2}),
    ("interpolation", {"layer": "encoder.layers.1.linear2", "lr": 1e-2}),
    ("low_rank", {"layer": "encoder.layers.1.linear2", "rank": 2}),
    ("finetune", {"layers": ["encoder.layers.1.self_attn"], "lr": 1e-2}),  # in_proj and out_proj of the attention
    ("finetune", {}),  # every parameter
])
def test_robust_editors_fix_mistakes_of_a_transformer_encoder(trained, name, args):
    """The fixed penalty on named layers, and the default constrained edit of every parameter (within its budget)."""
    model, x, y, retain = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    budget = {} if not args else {"budget": None}
    edited, result = make_editor(name, retain=retain, max_steps=300, **args, **budget).edit(model, x, y)
    assert result.success, result
    if not args:
        assert result.drift <= DEFAULT_BUDGET
    with torch.no_grad():
        assert torch.equal(edited(x).argmax(1), y)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the input model is untouched


def test_gradient_editor_on_attention_parameters(trained):
    model, x, y, _ = trained
    editor = GradientEditor(lr=1e-2, max_steps=50)
    edited, result = editor.edit(model, x[:1], y[:1], ["encoder.layers.1.*"], 10)
    with torch.no_grad():
        assert edited(x[:1]).argmax(1).item() == y[0].item() or not result.success


@pytest.mark.parametrize("editable", ["auto", ["encoder.layers.1.*"]])
def test_editable_training_on_a_transformer_encoder(tmp_path, editable):
    module = EditableModule(Encoder(), editable_parameters=editable, val_edits=4, val_drawdown_batches=1)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    edit_metrics = [k for k in trainer.callback_metrics if "edit" in k]
    assert edit_metrics, list(trainer.callback_metrics)
    assert all(torch.isfinite(trainer.callback_metrics[k]) for k in edit_metrics)
    assert module.editable_parameters and all(p.startswith("encoder.") or p.startswith("head") for p in module.editable_parameters)


def test_a_layer_name_that_matches_nothing_lists_the_valid_ones(trained):
    model, x, y, retain = trained
    with pytest.raises(ValueError, match=r"No layer with weights called 'encoder.layers.9.linear1'; layers are \[.*linear1"):
        make_editor("low_rank", layer="encoder.layers.9.linear1", retain=retain).edit(model, x, y)
