"""Lightning's smoke test: every config runs under ``--trainer.fast_dev_run=true``, and each editing callback runs its
edit once on the single epoch instead of refusing a schedule that reaches past it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lightning_edit import ClassifierModule
from lightning_edit.callbacks import DiscEditPruning, DiscEditUnlearning
from lightning_edit.cli import build_cli
from lightning_edit.data import FashionMNISTDataModule
from lightning_edit.models import SmallCNN

from tests.conftest import make_module, make_trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
HAVE_FASHION = FashionMNISTDataModule(root="data")._find("t10k-labels-idx1-ubyte") is not None
HAVE_CIFAR = (Path("data") / "cifar-10-batches-py").is_dir()

# Overrides a smoke test needs beyond fast_dev_run itself. fast_dev_run limits batches, not what a datamodule
# builds before them: the digits-CNN model zoo trains 128 networks (minutes), so its population is shrunk here.
EXTRA = {
    "discedit_prune_cifar10_vgg16.yaml": ["--trainer.accelerator=cpu", "--trainer.precision=32"],
    "metanet_prune_digits_cnn.yaml": ["--data.init_args.num_models=10", "--data.init_args.epochs=[1]",
                                      "--data.init_args.widths=[4]"],
}


def _skip_reason(name: str) -> str | None:
    if "fashion_mnist" in name and not HAVE_FASHION:
        return "Fashion-MNIST IDX files not installed (apt-get install dataset-fashion-mnist)"
    if "cifar10" in name and not HAVE_CIFAR:
        return "CIFAR-10 not in data/ (tests never download)"
    return None


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_config_runs_under_fast_dev_run(name, tmp_path, capsys):
    if (reason := _skip_reason(name)) is not None:
        pytest.skip(reason)
    args = ["fit", "--config", str(CONFIGS / name), "--trainer.fast_dev_run=true",
            f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false", *EXTRA.get(name, [])]
    cfg = OmegaConf.load(CONFIGS / name)
    if cfg.model.init_args.get("weights"):  # the "edit a trained checkpoint" configs read train_digits' checkpoint
        weights = tmp_path / "trained.pt"
        torch.save(ClassifierModule(SmallCNN(1, 10)).state_dict(), weights)
        args.append(f"--model.init_args.weights={weights}")
    if cfg.data.init_args.get("root") == "data/zoo":
        args.append(f"--data.init_args.root={tmp_path / 'zoo'}")
    cli = build_cli(args)
    assert cli.trainer.fast_dev_run
    for cb in cli.trainer.callbacks:
        if isinstance(cb, DiscEditPruning):
            assert len(cb.events) == 1 and cb.events[0]["removed"] > 0
        if isinstance(cb, DiscEditUnlearning):
            assert cb.report["fraction_masked"] > 0


def test_pruning_schedule_runs_once_at_full_sparsity_under_fast_dev_run(digits, tmp_path, caplog):
    cb = DiscEditPruning(sparsity=0.5, prune_epoch=3, end_epoch=6, schedule="cubic", calibration_batches=2)
    module = make_module()
    with caplog.at_level("INFO"):
        make_trainer(tmp_path, [cb], max_epochs=20, fast_dev_run=True).fit(module, datamodule=digits)
    assert [e["epoch"] for e in cb.events] == [0]
    assert module.model.features[0].out_channels == 8  # 16 * (1 - 0.5): the schedule's final sparsity
    assert "fast_dev_run is on" in caplog.text


def test_real_run_still_refuses_a_schedule_past_max_epochs(digits, tmp_path):
    cb = DiscEditPruning(sparsity=0.5, prune_epoch=3, end_epoch=6)
    with pytest.raises(ValueError, match="max_epochs"):
        make_trainer(tmp_path, [cb], max_epochs=2).fit(make_module(), datamodule=digits)
    forget = DiscEditUnlearning([3], ratio=0.2, unlearn_epoch=1, finetune_epochs=1)
    with pytest.raises(ValueError, match="max_epochs"):
        make_trainer(tmp_path, [forget], max_epochs=2).fit(make_module(), datamodule=digits)


@pytest.mark.parametrize("epoch, finetune", [(5, 2), ("start", 3)])
def test_unlearning_runs_once_under_fast_dev_run(digits, tmp_path, epoch, finetune):
    cb = DiscEditUnlearning([3], ratio=0.2, unlearn_epoch=epoch, finetune_epochs=finetune, calibration_batches=4)
    make_trainer(tmp_path, [cb], max_epochs=20, fast_dev_run=True).fit(make_module(), datamodule=digits)
    assert cb.report["fraction_masked"] > 0 and cb.done_epoch is not None
    assert ("FA_ft" in cb.report) == (epoch == "start")  # "start" fine-tunes on epoch 0 and measures after it
