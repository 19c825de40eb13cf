"""The ``lightning-edit`` command: LightningCLI over any LightningModule / LightningDataModule, omegaconf parser mode."""

from __future__ import annotations

import argparse
import inspect
import re
import warnings

import lightning as L
from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

# Imported so that LightningCLI resolves our classes by short name (`class_path: DiscEditPruning`,
# `--data DigitsDataModule`): it knows the subclasses that are imported when it parses.
from lightning_edit import callbacks, data, metanet, models
from lightning_edit.editable_module import EditableModule
from lightning_edit.module import ClassifierModule

_INTRO = """\
lightning-edit: edit trained networks from PyTorch Lightning without training them again from scratch:
prune them (DISCEDIT-SP), make them forget a class (DISCEDIT-U), train them to be cheap to correct
(Editable Training), check what an edit costs in robustness, or make them meet a requirement with a
graph metanetwork editor. A LightningCLI:

  lightning-edit fit --config configs/discedit_prune_digits.yaml
  lightning-edit fit --help                      # every option of fit
  lightning-edit fit --data DigitsDataModule --model ClassifierModule --model.model SmallCNN --print_config

Our classes may be named by their short names, in configs and on the command line."""


def _first_line(obj: object) -> str:
    doc = re.sub(r":\w+:`~?([^`]+)`", r"\1", inspect.getdoc(obj) or "").replace("``", "")
    sentence = doc.split("\n\n")[0].replace("\n", " ").strip()
    return sentence if len(sentence) <= 100 else sentence[:97].rsplit(" ", 1)[0] + "..."


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """Keeps the line breaks of the description and of the class list."""


def catalogue() -> str:
    """One line per callback, LightningModule, DataModule and model of the project (for ``--help``)."""
    groups = {
        "callbacks (trainer.callbacks)": [getattr(callbacks, n) for n in callbacks.__all__],
        "modules (--model)": [ClassifierModule, EditableModule, metanet.MetanetworkEditor],
        "datamodules (--data)": [getattr(data, n) for n in data.__all__
                                 if n.endswith("DataModule") and n not in ("TabularDataModule", "TensorDataModule")]
        + [metanet.ModelZooDataModule],
        "models (--model.model)": [getattr(models, n) for n in models.__all__ if inspect.isclass(getattr(models, n))],
    }
    lines = []
    for title, classes in groups.items():
        lines.append(f"{title}:")
        lines += [f"  {c.__name__}: {_first_line(c)}" for c in classes]
    return "\n".join(lines)


class EditCLI(LightningCLI):
    """LightningCLI with one extra flag for ``fit``: ``--test_after_fit true`` tests the final model on the test split."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--test_after_fit", type=bool, default=False, help="Run trainer.test after fit.")

    def after_fit(self) -> None:
        if self.config.get(self.subcommand, {}).get("test_after_fit"):
            self.trainer.test(self.model, datamodule=self.datamodule)


def build_cli(args: list[str] | None = None, run: bool = True) -> EditCLI:
    """Build (and by default run) the CLI; ``args`` replaces ``sys.argv[1:]`` (used by the tests)."""
    with warnings.catch_warnings():
        # Lightning 2.6 on torch >= 2.10 warns on every batch; nothing a user can act on.
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
        return EditCLI(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            parser_kwargs={"parser_mode": "omegaconf", "description": _INTRO, "epilog": catalogue(),
                           "formatter_class": _HelpFormatter},
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )


def main() -> None:
    """Entry point: ``lightning-edit fit --config configs/discedit_prune_digits.yaml`` (also validate, test, predict)."""
    build_cli()


if __name__ == "__main__":
    main()
