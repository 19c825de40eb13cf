"""DiscEditPruning on real data (sklearn digits): channel counts, training after pruning, checkpoints, errors."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

from lightning_edit import ClassifierModule
from lightning_edit.callbacks import DiscEditPruning
from lightning_edit.data import DigitsDataModule
from lightning_edit.discedit.structured import target_width
from lightning_edit.models import VGG, CifarResNet, SmallCNN
from tests.conftest import make_module, make_trainer


def conv_widths(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def fit_and_prune(tmp_path, module, sparsity=0.5, **cb_kwargs):
    cb = DiscEditPruning(sparsity=sparsity, prune_epoch=0, calibration_batches=4, plot=False, **cb_kwargs)
    trainer = make_trainer(tmp_path, [cb], max_epochs=1, limit_train_batches=4, limit_val_batches=2)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=64))
    return cb, trainer


@pytest.mark.parametrize("witness", ["fisher", "robust_fisher", "mpm", "exp_norm"])
def test_exact_channel_counts_vgg(tmp_path, witness):
    model = VGG("vgg11", in_channels=1, num_classes=10, width_multiplier=0.125, max_pools=3)
    before = conv_widths(model)
    module = make_module(model)
    dense = sum(p.numel() for p in module.parameters())
    cb, _ = fit_and_prune(tmp_path, module, sparsity=0.5, witness=witness)
    after = conv_widths(module.model)
    assert after == {n: target_width(w, 0.5, None) for n, w in before.items()}
    assert module.model.classifier.in_features == list(after.values())[-1]
    assert module(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert cb.events[0]["params"] == sum(p.numel() for p in module.parameters()) < 0.3 * dense


def test_exact_channel_counts_resnet_with_coupled_residual_channels(tmp_path):
    model = CifarResNet(20, in_channels=1, num_classes=10, shortcut="B", base_width=8)
    before = conv_widths(model)
    module = make_module(model)
    fit_and_prune(tmp_path, module, sparsity=0.5)
    after = conv_widths(module.model)
    assert set(after) == set(before)
    for name, w in before.items():
        assert after[name] == target_width(w, 0.5, None), name
    # the residual stream keeps one width: block outputs and shortcuts agree
    blk = module.model.layer2[0]
    assert blk.conv2.out_channels == blk.shortcut[0].out_channels == module.model.layer2[1].conv2.out_channels
    assert module(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_global_scope_and_min_channels(tmp_path):
    module = make_module()
    fit_and_prune(tmp_path, module, sparsity=0.6, scope="global", min_channels=3)
    widths = [module.model.features[0].out_channels, module.model.features[4].out_channels, module.model.hidden.out_features]
    assert min(widths) >= 3
    assert sum(widths) == 16 + 32 + 32 - round(0.6 * 16) - round(0.6 * 32) - round(0.6 * 32)


def test_parameter_sparsity_reaches_target(tmp_path):
    module = make_module()
    dense = sum(p.numel() for p in module.parameters())
    fit_and_prune(tmp_path, module, sparsity=0.5, sparsity_type="parameters", min_channels=1)
    kept = sum(p.numel() for p in module.parameters()) / dense
    assert 0.4 < kept <= 0.55


class Snapshot(Callback):
    """Records the parameters right after the prune (it runs after DiscEditPruning in the same hook)."""

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            self.params = {n: p.detach().clone() for n, p in pl_module.named_parameters()}


def test_pruned_model_keeps_training(tmp_path):
    module = make_module()
    snap = Snapshot()
    cb = DiscEditPruning(sparsity=0.5, prune_epoch=0, calibration_batches=4, plot=False)
    trainer = make_trainer(tmp_path, [cb, snap], max_epochs=2, limit_train_batches=5, limit_val_batches=2)
    trainer.fit(module, datamodule=DigitsDataModule())
    live = dict(module.named_parameters())
    assert set(live) == set(snap.params)
    for name, p in live.items():
        assert p.shape == snap.params[name].shape
        assert not torch.equal(p, snap.params[name]), f"{name} was not updated after the prune"
    opt_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in module.parameters()}


def test_gradual_schedule_and_logged_metrics(tmp_path):
    module = make_module()
    cb = DiscEditPruning(sparsity=0.5, prune_epoch=0, end_epoch=1, calibration_batches=2, plot=True)
    trainer = make_trainer(tmp_path, [cb], max_epochs=2, limit_train_batches=3, limit_val_batches=2)
    trainer.fit(module, datamodule=DigitsDataModule())
    assert [e["epoch"] for e in cb.events] == [0, 1]
    assert cb.events[0]["target_sparsity"] == pytest.approx(0.25)
    assert cb.events[1]["sparsity"] == pytest.approx(0.5, abs=0.05)
    assert module.model.features[0].out_channels == 8
    for key in ("discedit/sparsity", "discedit/params", "discedit/macs", "discedit/acc_before", "discedit/acc_after"):
        assert key in trainer.callback_metrics
    assert (tmp_path / "discedit_pruning.png").stat().st_size > 1000


def test_checkpoint_round_trip_and_resume(tmp_path):
    torch.manual_seed(0)
    module = make_module()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    cb = DiscEditPruning(sparsity=0.5, prune_epoch=0, calibration_batches=4, plot=False)
    trainer = make_trainer(tmp_path, [cb, ckpt], max_epochs=2, limit_train_batches=3, limit_val_batches=2,
                           enable_checkpointing=True)
    dm = DigitsDataModule()
    trainer.fit(module, datamodule=dm)
    x = next(iter(dm.test_dataloader()))[0]
    module.eval()
    expected = module(x)
    path = tmp_path / "ckpt" / "last.ckpt"

    reloaded = ClassifierModule.load_from_checkpoint(path, model=SmallCNN(1, 10, widths=(16, 32), hidden=32))
    reloaded.eval()
    assert reloaded.model.features[0].out_channels == 8
    torch.testing.assert_close(reloaded(x), expected, rtol=0, atol=0)

    fresh = make_module()
    cb2 = DiscEditPruning(sparsity=0.5, prune_epoch=0, calibration_batches=4, plot=False)
    trainer2 = make_trainer(tmp_path, [cb2], max_epochs=2, limit_train_batches=3, limit_val_batches=2)
    trainer2.fit(fresh, datamodule=dm, ckpt_path=path)  # nothing left to train: restores only
    fresh.eval()
    torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)
    assert cb2.events == cb.events

    plain = make_module()
    plain.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    plain.eval()
    torch.testing.assert_close(plain(x), expected, rtol=0, atol=0)


class DictBatchModule(L.LightningModule):
    """A user's own module whose batches are dicts with other key names."""

    def __init__(self):
        super().__init__()
        self.net = SmallCNN(1, 10, widths=(8, 16), hidden=16)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch["image"]), batch["label"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_user_module_with_custom_batch_structure(tmp_path):
    dm = DigitsDataModule()
    dm.setup()
    data = [{"image": x, "label": y} for x, y in zip(dm.train_set.x, dm.train_set.y)]
    loader = torch.utils.data.DataLoader(data, batch_size=64)
    module = DictBatchModule()
    cb = DiscEditPruning(sparsity=0.5, prune_epoch=0, calibration_batches=3, plot=False,
                         inputs_targets=lambda b: (b["image"], b["label"]))
    make_trainer(tmp_path, [cb], max_epochs=1, limit_train_batches=3).fit(module, train_dataloaders=loader)
    assert module.net.features[0].out_channels == 4
    with pytest.raises(ValueError, match="inputs_targets"):
        make_trainer(tmp_path, [DiscEditPruning(plot=False)], max_epochs=1).fit(DictBatchModule(), train_dataloaders=loader)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    ({"sparsity": 1.0}, r"sparsity must be in \[0, 1\)"),
    ({"sparsity": -0.1}, r"sparsity must be in \[0, 1\)"),
    ({"witness": "kl"}, "Unknown witness"),
    ({"scope": "model"}, "scope must be one of"),
    ({"min_channels": 0}, "min_channels must be >= 1"),
    ({"prune_epoch": 3, "end_epoch": 1}, "prune_epoch <= end_epoch"),
    # arguments that could not take effect
    ({"importance": "l1", "witness": "mpm"}, r"witness='mpm' only change\(s\) DISCEDIT's scores; importance='l1'"),
    ({"importance": "random", "feature_site": "activation"}, "feature_site='activation' only change"),
    ({"schedule": "cubic", "prune_epoch": 2}, "schedule='cubic' shapes a ramp over several prune epochs"),
    ({"schedule": "cubic", "prune_epoch": "start"}, "schedule='cubic' shapes a ramp"),
    ({"recalibrate_bn": False, "recalibration_batches": 4}, "recalibration_batches is set but recalibrate_bn=False"),
    ({"importance": "l1", "seed": 1}, "seed=1 seeds the random baseline only; importance='l1'"),
])
def test_bad_arguments_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiscEditPruning(**kwargs)


def test_arguments_that_take_effect_are_accepted():
    DiscEditPruning(importance="discedit", witness="mpm", feature_site="activation")
    DiscEditPruning(schedule="cubic", prune_epoch=1, end_epoch=3)
    DiscEditPruning(importance="random", seed=1)
    DiscEditPruning(importance="l1", recalibrate_bn=True, recalibration_batches=4)


class NoPrunable(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_setup_errors_leave_the_model_untouched(tmp_path):
    with pytest.raises(ValueError, match="No prunable layer"):
        make_trainer(tmp_path, [DiscEditPruning(plot=False)]).fit(NoPrunable(), datamodule=DigitsDataModule())

    module = make_module(SmallCNN(1, 10, widths=(4, 8), hidden=8))
    state = copy.deepcopy(module.state_dict())
    with pytest.raises(ValueError, match="zero width"):
        make_trainer(tmp_path, [DiscEditPruning(sparsity=0.9, plot=False)]).fit(module, datamodule=DigitsDataModule())
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in state.items())

    x = torch.randn(32, 1, 8, 8)
    soft = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.rand(32, 10)), batch_size=8)
    with pytest.raises(ValueError, match="class indices"):
        make_trainer(tmp_path, [DiscEditPruning(plot=False)]).fit(make_module(), train_dataloaders=soft)
    big = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.full((32,), 12)), batch_size=8)
    with pytest.raises(ValueError, match="class indices in"):
        make_trainer(tmp_path, [DiscEditPruning(plot=False)]).fit(make_module(), train_dataloaders=big)


def test_missing_class_warns_and_one_class_errors(tmp_path):
    dm = DigitsDataModule()
    dm.setup()
    keep = dm.train_set.y != 3
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(dm.train_set.x[keep], dm.train_set.y[keep]), batch_size=64)
    cb = DiscEditPruning(sparsity=0.25, prune_epoch=0, calibration_batches=None, plot=False, evaluate=False)
    with pytest.warns(UserWarning, match=r"classes \[3\] are absent"):
        make_trainer(tmp_path, [cb], max_epochs=1, limit_train_batches=2).fit(make_module(), train_dataloaders=loader)
    one = dm.train_set.y == 1
    loader1 = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(dm.train_set.x[one], dm.train_set.y[one]), batch_size=64)
    module = make_module()
    cb1 = DiscEditPruning(sparsity=0.25, prune_epoch=0, calibration_batches=2, plot=False, evaluate=False)
    with pytest.raises(ValueError, match="at least 2"):
        make_trainer(tmp_path, [cb1], max_epochs=1, limit_train_batches=1).fit(module, train_dataloaders=loader1)
    assert module.model.features[0].out_channels == 16


def test_scheduler_progress_survives_the_prune(tmp_path):
    import functools

    module = ClassifierModule(SmallCNN(1, 10, widths=(16, 32), hidden=32),
                              optimizer=functools.partial(torch.optim.SGD, lr=0.08),
                              lr_scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5))
    cb = DiscEditPruning(sparsity=0.5, prune_epoch=0, calibration_batches=2, plot=False, evaluate=False)
    trainer = make_trainer(tmp_path, [cb], max_epochs=2, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(module, datamodule=DigitsDataModule())
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.08 * 0.25)
