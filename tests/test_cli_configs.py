"""Every config in configs/ is exercised: the CPU ones run end to end with a tiny budget, the GPU one is parsed."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lightning_edit.cli import build_cli
from lightning_edit.data import FashionMNISTDataModule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
HAVE_FASHION = FashionMNISTDataModule(root="data")._find("t10k-labels-idx1-ubyte") is not None


def shrink(name: str, tmp_path: Path, callback: dict | None = None, max_epochs: int = 2, **data_args) -> Path:
    """A copy of a config with a tiny budget; ``callback`` overrides the first callback's init_args
    (the model's when the config has no callback)."""
    cfg = OmegaConf.load(CONFIGS / name)
    cfg.trainer.max_epochs = max_epochs
    cfg.trainer.limit_train_batches = 4
    cfg.trainer.limit_val_batches = 3
    cfg.trainer.limit_test_batches = 2
    cfg.trainer.default_root_dir = str(tmp_path)
    cfg.trainer.accelerator = "cpu"
    cfg.trainer.enable_progress_bar = False
    # one prune step, so no schedule: a ramp could not take effect (DiscEditPruning refuses it)
    callback = callback if callback is not None else {"prune_epoch": 0, "end_epoch": None, "schedule": "linear",
                                                      "calibration_batches": 2}
    for k, v in callback.items():
        target = cfg.trainer.callbacks[0].init_args if "callbacks" in cfg.trainer else cfg.model.init_args
        target[k] = v
    for k, v in data_args.items():
        cfg.data.init_args[k] = v
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / name
    OmegaConf.save(cfg, path)  # interpolations stay as ${...}: the omegaconf parser mode resolves them
    return path


def test_main_digits_config_end_to_end(tmp_path, capsys):
    cli = build_cli(["fit", "--config", str(shrink("discedit_prune_digits.yaml", tmp_path))])
    cb = cli.trainer.callbacks[0]
    assert cb.events and cb.events[0]["sparsity"] == pytest.approx(0.75, abs=0.02)
    assert cli.model.model.features[0].out_channels == 8  # 32 * (1 - 0.75)
    assert "test_acc" in cli.trainer.callback_metrics  # test_after_fit ran
    out = capsys.readouterr().out
    assert "DISCEDIT-SP: model before / after" in out and "MACs" in out
    assert list(tmp_path.rglob("discedit_pruning.png"))
    assert list(tmp_path.rglob("last.ckpt"))


def test_readme_test_command_tests_the_final_model(tmp_path):
    """`lightning-edit test --ckpt_path <root>/checkpoints/last.ckpt` (README) scores the model fit ended with,
    and the best checkpoint holds a pruned model."""
    cfg = shrink("discedit_prune_digits.yaml", tmp_path, {"prune_epoch": 1, "end_epoch": 2, "calibration_batches": 2}, 4)
    cli = build_cli(["fit", "--config", str(cfg)])
    final = float(cli.trainer.callback_metrics["test_acc"])
    last = tmp_path / "checkpoints" / "last.ckpt"
    tested = build_cli(["test", "--config", str(cfg), "--ckpt_path", str(last)])
    assert float(tested.trainer.callback_metrics["test_acc"]) == pytest.approx(final, abs=1e-6)
    best = [p for p in (tmp_path / "checkpoints").glob("best-*.ckpt")]
    assert len(best) == 1 and int(best[0].name.split("epoch=")[1].split("-")[0]) >= 2  # ranked after the last prune


def test_edit_trained_checkpoint_configs_end_to_end(tmp_path):
    """README "Edit a trained checkpoint": train, then unlearn and prune the trained weights (fit starts at epoch 0)."""
    build_cli(["fit", "--config", str(shrink("train_digits.yaml", tmp_path / "train", {}, 3))])
    weights = str(tmp_path / "train" / "checkpoints" / "last.ckpt")
    cfg = shrink("discedit_unlearn_pretrained_digits.yaml", tmp_path / "u", {"calibration_batches": 4}, 1)
    cli = build_cli(["fit", "--config", str(cfg), "--model.init_args.weights", weights])
    report = cli.trainer.callbacks[0].report
    assert report["retain_acc_before"] > 0.5  # the trained weights were loaded, not a fresh init
    assert report["forget_acc_after_ft"] < report["forget_acc_before"] and "test_acc" in cli.trainer.callback_metrics
    assert (tmp_path / "u" / "checkpoints" / "last.ckpt").is_file()
    cfg = shrink("discedit_prune_pretrained_digits.yaml", tmp_path / "p", {"calibration_batches": 4}, 1)
    cli = build_cli(["fit", "--config", str(cfg), "--model.init_args.weights", weights])
    event = cli.trainer.callbacks[0].events[0]
    assert event["at_start"] and event["acc_before"] > 0.5
    assert cli.model.model.features[0].out_channels == 16  # 32 * (1 - 0.5)


def test_help_introduces_the_tool_and_lists_our_classes(capsys):
    with pytest.raises(SystemExit):
        build_cli(["--help"])
    out = capsys.readouterr().out
    assert "lightning-edit: edit trained networks" in out
    for name in ("DiscEditPruning:", "DiscEditUnlearning:", "RobustEditReport:", "ClassifierModule:", "EditableModule:",
                 "MetanetworkEditor:", "DigitsDataModule:", "AdultDataModule:", "ModelZooDataModule:", "SmallCNN:"):
        assert name in out


def test_short_class_names_resolve_on_the_command_line(capsys):
    with pytest.raises(SystemExit):
        build_cli(["fit", "--data", "DigitsDataModule", "--model", "ClassifierModule", "--model.model", "SmallCNN",
                   "--trainer.callbacks+=DiscEditPruning", "--print_config"])
    out = capsys.readouterr().out
    for path in ("lightning_edit.data.DigitsDataModule", "lightning_edit.ClassifierModule",
                 "lightning_edit.models.SmallCNN", "lightning_edit.callbacks.DiscEditPruning"):
        assert f"class_path: {path}" in out


def test_cli_silences_only_the_treespec_deprecation(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_cli(["fit", "--config", str(shrink("discedit_prune_digits.yaml", tmp_path, max_epochs=1))])
    assert not [w for w in caught if "LeafSpec" in str(w.message)]
    with pytest.warns(FutureWarning, match="LeafSpec"):
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning)


@pytest.mark.skipif(not HAVE_FASHION, reason="Fashion-MNIST IDX files not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_config_end_to_end(tmp_path):
    cli = build_cli(["fit", "--config", str(shrink("discedit_prune_fashion_mnist.yaml", tmp_path, train_subset=1024))])
    assert cli.trainer.callbacks[0].events
    assert cli.model.model.features[0].out_channels == 8  # 16 * 0.5


@pytest.mark.skipif(not HAVE_FASHION, reason="Fashion-MNIST IDX files not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_vit_config_end_to_end(tmp_path):
    cli = build_cli(["fit", "--config", str(shrink("discedit_prune_fashion_mnist_vit.yaml", tmp_path, train_subset=1024))])
    assert cli.trainer.callbacks[0].events
    assert [b.attn.num_heads for b in cli.model.model.blocks] == [2, 2, 2]
    assert [b.fc1.out_features for b in cli.model.model.blocks] == [128, 128, 128]


def test_cifar_config_parses(tmp_path):
    cli = build_cli(["--config", str(CONFIGS / "discedit_prune_cifar10_vgg16.yaml"),
                     "--trainer.accelerator=cpu", "--trainer.precision=32"], run=False)
    assert cli.model.model.classifier.in_features == 512
    assert cli.trainer.callbacks[0].sparsity == 0.5


def test_print_config_resolves_interpolation(capsys):
    with pytest.raises(SystemExit):
        build_cli(["fit", "--config", str(CONFIGS / "discedit_prune_digits.yaml"), "--print_config"])
    out = capsys.readouterr().out
    assert "num_classes: 10" in out and "${" not in out


def test_validate_and_test_subcommands(tmp_path):
    cfg = shrink("discedit_prune_digits.yaml", tmp_path)
    for sub in ("validate", "test"):
        cli = build_cli([sub, "--config", str(cfg)])
        assert f"{'val' if sub == 'validate' else 'test'}_acc" in cli.trainer.callback_metrics


UNLEARN = {"unlearn_epoch": 1, "calibration_batches": 4}


def test_unlearn_digits_config_end_to_end(tmp_path):
    cli = build_cli(["fit", "--config", str(shrink("discedit_unlearn_digits.yaml", tmp_path, UNLEARN, 3))])
    report = cli.trainer.callbacks[0].report
    assert report["masked"] and "FA_ft" in report
    assert "unlearn/RA_ft" in cli.trainer.callback_metrics


@pytest.mark.skipif(not HAVE_FASHION, reason="Fashion-MNIST IDX files not installed (apt-get install dataset-fashion-mnist)")
def test_unlearn_fashion_mnist_config_end_to_end(tmp_path):
    cli = build_cli(["fit", "--config", str(shrink("discedit_unlearn_fashion_mnist.yaml", tmp_path, UNLEARN, 3, train_subset=1024))])
    assert set(cli.trainer.callbacks[0].report["masked"]) == {f"model.features.{i}" for i in (15, 18, 22, 25)}


def test_editable_digits_config_end_to_end(tmp_path):
    cli = build_cli(["fit", "--config", str(shrink("editable_digits.yaml", tmp_path, {"val_edits": 4}, 2))])
    assert "test_acc" in cli.trainer.callback_metrics  # test_after_fit ran
    header = next(tmp_path.rglob("metrics.csv")).read_text().splitlines()[0].split(",")
    for key in ("edit/success_rate", "edit/drawdown", "edit/mean_steps", "edit/base_error"):
        assert key in header


@pytest.mark.skipif(not HAVE_FASHION, reason="Fashion-MNIST IDX files not installed (apt-get install dataset-fashion-mnist)")
def test_editable_fashion_mnist_config_end_to_end(tmp_path):
    build_cli(["fit", "--config", str(shrink("editable_fashion_mnist.yaml", tmp_path, {"val_edits": 2}, 1, train_subset=512))])
    assert "edit/mean_steps" in next(tmp_path.rglob("metrics.csv")).read_text().splitlines()[0]


def test_robust_edit_digits_config_end_to_end(tmp_path):
    cli = build_cli(["fit", "--config", str(shrink("robust_edit_digits.yaml", tmp_path, {"eval_batches": 2}, 2))])
    assert "robust/pgd" in cli.trainer.callback_metrics and "original" in cli.trainer.callbacks[0].results


@pytest.mark.skipif(not HAVE_FASHION, reason="Fashion-MNIST IDX files not installed (apt-get install dataset-fashion-mnist)")
def test_robust_edit_fashion_mnist_config_end_to_end(tmp_path):
    path = shrink("robust_edit_fashion_mnist.yaml", tmp_path, {"eval_batches": 2, "edit_class": None}, 1, train_subset=512)
    cli = build_cli(["fit", "--config", str(path)])
    assert "robust/clean" in cli.trainer.callback_metrics


def test_metanet_prune_adult_config_end_to_end(tmp_path):
    cfg = OmegaConf.load(CONFIGS / "metanet_prune_adult.yaml")
    cfg.trainer.update(max_epochs=1, limit_train_batches=3, limit_val_batches=1, default_root_dir=str(tmp_path),
                       accelerator="cpu", enable_progress_bar=False)
    cfg.model.init_args.update(hidden=16, num_layers=1)
    cfg.data.init_args.update(num_models=8, epochs=[1], widths=[8], root=str(tmp_path / "zoo"))
    path = tmp_path / "metanet.yaml"
    OmegaConf.save(cfg, path)
    cli = build_cli(["fit", "--config", str(path)])
    assert float(cli.trainer.callback_metrics["val/sparsity"]) == pytest.approx(0.6, abs=0.01)


def test_metanet_prune_digits_cnn_config_end_to_end(tmp_path):
    cfg = OmegaConf.load(CONFIGS / "metanet_prune_digits_cnn.yaml")
    cfg.trainer.update(max_epochs=1, limit_train_batches=3, limit_val_batches=1, limit_test_batches=1,
                       check_val_every_n_epoch=1, default_root_dir=str(tmp_path), accelerator="cpu",
                       enable_progress_bar=False)
    cfg.model.init_args.update(hidden=16, num_layers=1)
    cfg.data.init_args.update(num_models=10, epochs=[2], widths=[4], root=str(tmp_path / "zoo"))
    path = tmp_path / "cnn.yaml"
    OmegaConf.save(cfg, path)
    cli = build_cli(["fit", "--config", str(path), "--test_after_fit", "true"])
    metrics = cli.trainer.callback_metrics
    # one gate per kernel weight: round(0.6 · W) single weights of each network's W >= 220
    assert float(metrics["test/sparsity"]) == pytest.approx(0.6, abs=0.5 / 220)
    assert cli.datamodule.family == "cnn" and cli.model.hparams.kernel_size == 3
    assert (cli.model.hparams.gate_granularity, cli.model.hparams.gate_prior) == ("weight", "magnitude")


def shrink_metanet(name: str, tmp_path: Path, **model_args) -> Path:
    cfg = OmegaConf.load(CONFIGS / name)
    cfg.trainer.update(max_epochs=1, limit_train_batches=3, limit_val_batches=1, limit_test_batches=1,
                       check_val_every_n_epoch=1, default_root_dir=str(tmp_path), accelerator="cpu",
                       enable_progress_bar=False)
    cfg.model.init_args.update(hidden=16, num_layers=1, **model_args)
    cfg.data.init_args.update(num_models=8, epochs=[1], widths=[8], root=str(tmp_path / "zoo"))
    path = tmp_path / name
    OmegaConf.save(cfg, path)
    return path


@pytest.mark.parametrize("name, level, expected", [
    ("metanet_minimise_adult.yaml", "units_used", 4.0),
    ("metanet_minimise_german.yaml", "units_used", 17.0),
    ("metanet_fairness_adult.yaml", "eo_difference", None),
])
def test_metanet_requirement_configs_end_to_end(tmp_path, name, level, expected):
    cli = build_cli(["fit", "--config", str(shrink_metanet(name, tmp_path)), "--test_after_fit", "true"])
    metrics = cli.trainer.callback_metrics
    value = float(metrics[f"test/{level}"])
    assert value == expected if expected is not None else 0.0 <= value <= 1.0
    if "minimise" in name:
        assert float(metrics["test/dropped_influence"]) == 0.0
    assert 0.5 < float(metrics["test/accuracy"]) <= 1.0


def test_unknown_requirement_in_yaml_is_a_clear_error(tmp_path):
    path = shrink_metanet("metanet_minimise_adult.yaml", tmp_path, requirement="minimise_data")
    with pytest.raises(ValueError, match="Unknown requirement 'minimise_data'; choose one of"):
        build_cli(["fit", "--config", str(path)])
