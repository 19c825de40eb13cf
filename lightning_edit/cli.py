"""The ``lightning-edit`` command: LightningCLI over any LightningModule / LightningDataModule, omegaconf parser mode."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI


class EditCLI(LightningCLI):
    """LightningCLI with one extra flag for ``fit``: ``--test_after_fit true`` tests the final model on the test split."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--test_after_fit", type=bool, default=False, help="Run trainer.test after fit.")

    def after_fit(self) -> None:
        if self.config.get(self.subcommand, {}).get("test_after_fit"):
            self.trainer.test(self.model, datamodule=self.datamodule)


def build_cli(args: list[str] | None = None, run: bool = True) -> EditCLI:
    """Build (and by default run) the CLI; ``args`` replaces ``sys.argv[1:]`` (used by the tests)."""
    return EditCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def main() -> None:
    """Entry point: ``lightning-edit fit --config configs/discedit_prune_digits.yaml`` (also validate, test, predict)."""
    build_cli()


if __name__ == "__main__":
    main()
