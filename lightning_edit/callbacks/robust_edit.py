"""Robustness report callback: what an edit costs in robustness (Brown et al., "Robustness of edited neural
networks", 2023). At the end of fit (or on demand with :meth:`RobustEditReport.run`) it measures the model's
clean, L∞-PGD and corruption accuracy; with an editor, it also edits the model to fix misclassified
validation samples and reports the same numbers for the edited copy, the change, edit success and
edit generalisation."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_edit.callbacks._common import InputsTargets, default_inputs_targets, device_batches, log_metrics, stage_loader
from lightning_edit.robust.editors import Editor
from lightning_edit.robust.report import report_change, robustness_report


class RobustEditReport(Callback):
    """Robustness of the trained model and of an edit of it.

    The edit set is the first ``num_edits`` misclassified samples of the validation batches (of class
    ``edit_class`` when given), to be fixed to their true labels. The editor edits the wrapped classifier
    (``pl_module.model`` when it exists, else the LightningModule); the trained model is not changed.

    Logged (``robust/...``): ``clean``, ``pgd``, ``corruption/<name>`` for the original model, the same with
    ``edited/`` and ``change/`` prefixes, and ``edited/edit_success``, ``edited/edit_generalisation``.
    The results are kept in ``self.results``.

    Args:
        editor: any :class:`~lightning_edit.robust.Editor` (None: report on the model only).
        num_edits: size of the edit set.
        edit_class: only misclassified samples of this class.
        eps: L∞ PGD budget in pixel units ([0, 1] images); pgd_steps: its iterations.
        eval_batches: validation batches used for every accuracy.
        corruptions: name -> severity (default :data:`lightning_edit.robust.DEFAULT_CORRUPTIONS`).
        input_std: standardisation std of the inputs (default: the datamodule's ``std`` if it has one, else 1).
        inputs_targets: ``batch -> (inputs, class_indices)``.

    Raises:
        ValueError: at construction for ``eps < 0`` or ``num_edits < 1``.
    """

    def __init__(
        self, editor: Editor | None = None, num_edits: int = 16, edit_class: int | None = None, eps: float = 0.1,
        pgd_steps: int = 10, eval_batches: int = 4, corruptions: dict[str, float] | None = None,
        input_std: float | None = None, inputs_targets: InputsTargets | None = None,
    ) -> None:
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}.")
        if num_edits < 1:
            raise ValueError(f"num_edits must be >= 1, got {num_edits}.")
        self.editor, self.num_edits, self.edit_class, self.eps = editor, num_edits, edit_class, eps
        self.pgd_steps, self.eval_batches, self.corruptions, self.input_std = pgd_steps, eval_batches, corruptions, input_std
        self._inputs_targets = inputs_targets or default_inputs_targets
        self.results: dict[str, Any] = {}

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.run(trainer, pl_module)

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Measure now (also usable after ``trainer.validate``/``test``); returns ``self.results``."""
        loader = stage_loader(trainer, "val")
        if loader is None:
            rank_zero_warn("RobustEditReport: no validation loader; nothing to measure.")
            return self.results
        batches = list(device_batches(loader, self._inputs_targets, pl_module.device, self.eval_batches))
        std = self.input_std
        if std is None:
            dm_std = getattr(trainer.datamodule, "std", None)
            std = float(torch.as_tensor(dm_std).mean()) if dm_std is not None else 1.0
        model = getattr(pl_module, "model", pl_module)
        was_training = model.training
        kw = dict(eps=self.eps, pgd_steps=self.pgd_steps, corruptions=self.corruptions, input_std=std)
        try:
            edit_x, edit_y = self._edit_set(model, batches) if self.editor is not None else (None, None)
            base = robustness_report(model, batches, edit_x=edit_x, edit_y=edit_y, **kw)
            self.results = {"original": base}
            if edit_x is not None:
                edited, result = self.editor.edit(model, edit_x, edit_y)
                after = robustness_report(edited, batches, edit_x=edit_x, edit_y=edit_y, **kw)
                self.results.update(edited=after, change=report_change(after, base), edit=result.__dict__)
        finally:
            model.train(was_training)
        metrics = {f"robust/{k}": v for k, v in base.items()}
        for group in ("edited", "change"):
            metrics.update({f"robust/{group}/{k}": v for k, v in self.results.get(group, {}).items()})
        log_metrics(trainer, pl_module, metrics, in_loop=False)
        self._print()
        return self.results

    def _edit_set(self, model: torch.nn.Module, batches: list[tuple[Tensor, Tensor]]) -> tuple[Tensor | None, Tensor | None]:
        model.eval()
        xs, ys = [], []
        with torch.no_grad():
            for x, y in batches:
                wrong = model(x).argmax(-1) != y
                if self.edit_class is not None:
                    wrong &= y == self.edit_class
                xs.append(x[wrong])
                ys.append(y[wrong])
        x, y = torch.cat(xs)[: self.num_edits], torch.cat(ys)[: self.num_edits]
        if len(x) == 0:
            rank_zero_warn("RobustEditReport: no misclassified validation sample to edit; reporting the model only.")
            return None, None
        return x, y

    @rank_zero_only
    def _print(self) -> None:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="Robustness: original vs edited model (accuracy)")
        for col in ("", "original", "edited", "change"):
            table.add_column(col, justify="right")
        original, edited, change = (self.results.get(k, {}) for k in ("original", "edited", "change"))
        for key in list(original) + [k for k in edited if k not in original]:
            cells = [f"{d[key]:.4f}" if key in d else "" for d in (original, edited)]
            table.add_row(key, *cells, f"{change[key]:+.4f}" if key in change else "")
        Console().print(table)
        if "edit" in self.results:
            rank_zero_info(f"edit: {self.results['edit']}")
