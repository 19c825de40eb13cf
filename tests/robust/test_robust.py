"""Robustness editors, PGD and the report on a small CNN trained on the real 8x8 digits."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch

from lightning_edit import ClassifierModule
from lightning_edit.callbacks import RobustEditReport
from lightning_edit.data import DigitsDataModule
from lightning_edit.models import SmallCNN
from lightning_edit.robust import (
    FineTuneEditor,
    InterpolationEditor,
    LowRankEditor,
    gaussian_blur,
    pgd_attack,
    report_change,
    robustness_report,
)


@pytest.fixture(scope="module")
def trained(trained_digits):
    module, dm = trained_digits
    model = module.model
    x, y = dm.test_set.x, dm.test_set.y
    with torch.no_grad():
        wrong = model(x).argmax(1) != y
    return model, dm, x[wrong][:6], y[wrong][:6]


def changed_parameters(a, b):
    return {n for (n, p), q in zip(a.named_parameters(), b.parameters()) if not torch.equal(p, q)}


def test_editors_fix_the_edit_set_and_touch_only_what_they_claim(trained):
    model, dm, ex, ey = trained
    assert len(ex) >= 3
    state = {k: v.clone() for k, v in model.state_dict().items()}
    full, r_full = FineTuneEditor(lr=1e-2, max_steps=200).edit(model, ex, ey)
    one, r_one = FineTuneEditor(["hidden"], lr=1e-2, max_steps=300).edit(model, ex, ey)
    li = InterpolationEditor("hidden", lr=1e-2, max_steps=300)
    interp, r_li = li.edit(model, ex, ey)
    low, r_low = LowRankEditor("hidden", rank=2, lr=5e-2, max_steps=300).edit(model, ex, ey)
    for r in (r_full, r_one, r_li, r_low):
        assert r.success
    assert changed_parameters(model, one) <= {"hidden.weight", "hidden.bias"}
    assert changed_parameters(model, interp) <= {"hidden.weight", "hidden.bias"}
    assert changed_parameters(model, low) == {"hidden.weight"}
    assert torch.linalg.matrix_rank(low.hidden.weight - model.hidden.weight) <= 2
    assert 0.0 < li.alpha <= 1.0
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # input untouched


def test_interpolation_endpoints(trained):
    model, dm, ex, ey = trained
    li = InterpolationEditor("hidden", lr=1e-2, max_steps=50)
    finetuned, _ = li.finetune.edit(model, ex, ey)
    at0, at1 = li.interpolate(model, finetuned, 0.0), li.interpolate(model, finetuned, 1.0)
    x = dm.test_set.x[:50]
    torch.testing.assert_close(at0(x), model(x), rtol=0, atol=0)
    torch.testing.assert_close(at1(x), finetuned(x), rtol=0, atol=0)


def test_pgd_lowers_accuracy_within_the_ball(trained):
    model, dm, _, _ = trained
    x, y = dm.test_set.x[:200], dm.test_set.y[:200]
    std = float(dm.std.mean())
    clean = (model(x).argmax(1) == y).float().mean()
    x_adv = pgd_attack(model, x, y, eps=0.1, steps=10, input_std=std)
    adv = (model(x_adv).argmax(1) == y).float().mean()
    assert (x_adv - x).abs().max() <= 0.1 / std + 1e-6
    assert adv < clean - 0.3, (clean, adv)
    assert torch.equal(pgd_attack(model, x, y, eps=0.0), x)
    weak = (model(pgd_attack(model, x, y, eps=0.02, input_std=std)).argmax(1) == y).float().mean()
    assert adv <= weak <= clean  # monotone in the budget


def test_report_and_change(trained):
    model, dm, ex, ey = trained
    batches = [(dm.test_set.x[:128], dm.test_set.y[:128])]
    before = robustness_report(model, batches, eps=0.05, edit_x=ex, edit_y=ey)
    assert before["edit_success"] == 0.0 and 0 <= before["pgd"] <= before["clean"]
    assert {"corruption/gaussian_noise", "corruption/blur", "corruption/contrast"} <= set(before)
    edited, _ = FineTuneEditor(lr=1e-2, max_steps=200).edit(model, ex, ey)
    after = robustness_report(edited, batches, eps=0.05, edit_x=ex, edit_y=ey)
    change = report_change(after, before)
    assert change["edit_success"] == pytest.approx(1.0)
    blurred = gaussian_blur(torch.ones(1, 1, 8, 8), 1.0)
    torch.testing.assert_close(blurred, torch.ones(1, 1, 8, 8))  # blur keeps a constant image


def test_bad_input(trained):
    model, dm, ex, ey = trained
    with pytest.raises(ValueError, match="No layer with weights called 'layer9'"):
        InterpolationEditor("layer9").edit(model, ex, ey)
    with pytest.raises(ValueError, match="larger than layer"):
        LowRankEditor("classifier", rank=11).edit(model, ex, ey)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        robustness_report(model, [(ex, ey)], eps=-0.1)
    with pytest.raises(ValueError, match="Need eps >= 0"):
        pgd_attack(model, ex, ey, eps=-1)
    with pytest.raises(ValueError, match="empty"):
        FineTuneEditor().edit(model, ex[:0], ey[:0])
    with pytest.raises(ValueError, match="eps must be >= 0"):
        RobustEditReport(eps=-1)


def test_callback_reports_original_and_edited(tmp_path):
    L.seed_everything(0)
    cb = RobustEditReport(editor=LowRankEditor("hidden", rank=1, lr=5e-2, max_steps=100), num_edits=4, eps=0.05, eval_batches=2)
    module = ClassifierModule(SmallCNN(1, 10), optimizer=functools.partial(torch.optim.Adam, lr=3e-3))
    trainer = L.Trainer(max_epochs=2, limit_train_batches=5, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                        callbacks=[cb])
    trainer.fit(module, DigitsDataModule())
    assert {"original", "edited", "change", "edit"} <= set(cb.results)
    for key in ("robust/clean", "robust/pgd", "robust/edited/edit_success", "robust/change/clean"):
        assert key in trainer.callback_metrics
