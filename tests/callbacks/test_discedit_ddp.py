"""DDP on CPU (ddp_spawn, 2 processes, gloo) selects the same channels as one process on the same data,
and training goes on after the prune (DDP re-wrapped around the smaller model)."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from torch import nn

from lightning_edit import ClassifierModule
from lightning_edit.callbacks import DiscEditPruning
from lightning_edit.data import DigitsDataModule
from lightning_edit.discedit.structured import pruning_record


def net() -> nn.Module:
    # No BatchNorm: running statistics would differ between shards and make the runs incomparable.
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10),
    )


def run(tmp_path, strategy: str, devices: int, redundancy: float = 0.0, extra: tuple = ()) -> list:
    module = ClassifierModule(net(), optimizer=functools.partial(torch.optim.SGD, lr=0.0))
    cb = DiscEditPruning(sparsity=0.5, prune_epoch=0, calibration_batches=None, calibration_source="val",
                         plot=False, evaluate=False, redundancy=redundancy)
    trainer = L.Trainer(
        accelerator="cpu", devices=devices, strategy=strategy, max_epochs=2, limit_train_batches=2, callbacks=[cb, *extra],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, default_root_dir=str(tmp_path),
    )
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=45))
    return pruning_record(module)["history"]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
@pytest.mark.parametrize("redundancy", [0.0, 1.0])  # 1.0: the channel correlations are all-reduced too
def test_ddp_spawn_selects_same_channels_as_single_process(tmp_path, fresh_ddp_env, redundancy):
    single = run(tmp_path / "single", "auto", 1, redundancy)
    ddp = run(tmp_path / "ddp", "ddp_spawn", 2, redundancy, extra=(fresh_ddp_env,))
    assert len(single) == 3
    assert [[n, o, sorted(i)] for n, o, i in ddp] == [[n, o, sorted(i)] for n, o, i in single]


def run_unlearning(tmp_path, strategy: str, devices: int, extra: tuple = ()) -> dict:
    from lightning_edit.callbacks import DiscEditUnlearning

    module = ClassifierModule(net(), optimizer=functools.partial(torch.optim.SGD, lr=0.0))
    cb = DiscEditUnlearning([3], unlearn_epoch=0, calibration_batches=None, calibration_source="val", plot=False,
                            evaluate=False, forget_target=0.05)
    trainer = L.Trainer(
        accelerator="cpu", devices=devices, strategy=strategy, max_epochs=1, limit_train_batches=2, callbacks=[cb, *extra],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, default_root_dir=str(tmp_path),
    )
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=45))
    metrics = trainer.callback_metrics  # ddp_spawn returns rank 0's metrics, not the callback's attributes
    return {k: round(float(metrics[f"unlearn/{k}"]), 6) for k in ("ratio", "calibration_forget_acc", "fraction_masked")}


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_ddp_spawn_unlearning_search_picks_the_same_ratio_and_masks(tmp_path, fresh_ddp_env):
    """ratio='auto' sums the forget-class counts across ranks, so both ranks and one process agree."""
    single = run_unlearning(tmp_path / "single", "auto", 1)
    ddp = run_unlearning(tmp_path / "ddp", "ddp_spawn", 2, extra=(fresh_ddp_env,))
    assert ddp == single and 0 < single["ratio"] <= 0.5 and single["calibration_forget_acc"] <= 0.05


def trained_state() -> dict:
    """net() trained 3 epochs on the digits, so the candidates differ by more than a padded duplicate sample."""
    torch.manual_seed(0)
    module = ClassifierModule(net(), optimizer=functools.partial(torch.optim.Adam, lr=3e-3))
    L.Trainer(accelerator="cpu", devices=1, max_epochs=3, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(module, datamodule=DigitsDataModule(batch_size=45))
    return module.model.state_dict()


def run_auto(tmp_path, strategy: str, devices: int, state: dict, extra: tuple = ()) -> tuple[list, dict]:
    model = net()
    model.load_state_dict(state)
    module = ClassifierModule(model, optimizer=functools.partial(torch.optim.SGD, lr=0.0))
    cb = DiscEditPruning(sparsity=0.5, prune_epoch=0, importance="auto", candidates=["discedit", "tp_l2", "lamp_global"],
                         calibration_batches=None, calibration_source="val", selection_source="train", plot=False,
                         evaluate=False)
    trainer = L.Trainer(
        accelerator="cpu", devices=devices, strategy=strategy, max_epochs=2, limit_train_batches=2, callbacks=[cb, *extra],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, default_root_dir=str(tmp_path),
    )
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=45))
    selection = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("discedit/auto/")}
    return pruning_record(module)["history"], selection


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_ddp_spawn_auto_selection_makes_the_same_choice_on_every_rank(tmp_path, fresh_ddp_env):
    """Selection counts are summed across ranks: both ranks prune the same copy (training goes on after the prune, so
    ranks that disagreed on shapes would fail in DDP), and the choice is the single process's."""
    state = trained_state()
    single_history, single = run_auto(tmp_path / "single", "auto", 1, state)
    ddp_history, ddp = run_auto(tmp_path / "ddp", "ddp_spawn", 2, state, extra=(fresh_ddp_env,))
    assert max(ddp, key=ddp.get) == max(single, key=single.get)
    assert [[n, o, sorted(i)] for n, o, i in ddp_history] == [[n, o, sorted(i)] for n, o, i in single_history]
    # the train shards hold one padded duplicate (1,167 samples on 2 ranks): the accuracies agree to 1/1,167
    assert all(abs(ddp[k] - single[k]) <= 1 / 1167 + 1e-9 for k in single)


class SameMasksOnEveryRank(L.Callback):
    """At the end of fit, all-gather each rank's masked-component indices, BatchNorm statistics and classifier (whose
    forget row is re-fitted on each rank's shard with averaged gradients); any difference fails the spawned rank (and
    so the test)."""

    def on_fit_end(self, trainer, pl_module):
        state = [b.detach().double().flatten() for n, b in pl_module.named_buffers()
                 if n.endswith(("_mask", "running_mean", "running_var"))]
        state += [p.detach().double().flatten() for p in pl_module.model.fc.parameters()]
        mine = torch.cat(state)
        gathered = trainer.strategy.all_gather(mine)
        assert gathered.ndim == 2 and torch.allclose(gathered[0], gathered[1], atol=1e-6), "ranks disagree"


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_ddp_spawn_unlearning_with_batchnorm_re_estimation_agrees_across_ranks(tmp_path, fresh_ddp_env):
    """The default search re-estimates BatchNorm statistics under each candidate (averaged across ranks) and masks a
    residual stream's writers together: both ranks end with the same masks and the same statistics."""
    from lightning_edit.callbacks import DiscEditUnlearning
    from tests.conftest import ResCNN

    torch.manual_seed(0)
    module = ClassifierModule(ResCNN(), optimizer=functools.partial(torch.optim.SGD, lr=0.0))
    cb = DiscEditUnlearning([3], unlearn_epoch=0, calibration_batches=None, calibration_source="val", plot=False,
                            evaluate=False, refit_steps=50)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1, limit_train_batches=2,
        callbacks=[cb, SameMasksOnEveryRank(), fresh_ddp_env], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path),
    )
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=45))
    assert 0 < float(trainer.callback_metrics["unlearn/ratio"]) <= 0.5
