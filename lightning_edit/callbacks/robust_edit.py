"""Robustness report callback: what an edit costs in robustness (Brown et al., "Robustness of edited neural
networks", 2023). At the end of fit (or on demand with :meth:`RobustEditReport.run`) it measures the model's
clean, L∞-PGD and corruption accuracy; with an editor, it also edits the model to fix misclassified
validation samples and reports the same numbers for the edited copy, the change, edit success and
edit generalisation."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_edit.callbacks._common import InputsTargets, default_inputs_targets, device_batches, log_metrics, stage_loader
from lightning_edit.edit import EDITORS, make_editor
from lightning_edit.robust.editors import Editor
from lightning_edit.robust.report import collateral_shift, report_change, robustness_report


class RobustEditReport(Callback):
    """Robustness of the trained model and of edits of it, under Brown et al.'s edit protocol.

    The misclassified samples of the validation batches (of class ``edit_class`` when given) are split: the first
    ``num_edits`` are the edit set, to be fixed to their true labels; the rest are the held-out set of the same kind
    (does the fix generalise?). Each editor edits the wrapped classifier (``pl_module.model`` when it exists, else
    the LightningModule); the trained model is not changed. Editors that take ``retain=`` get ``retain_batches``
    training batches for their locality term; a ``FineTuneEditor`` at ``adversarial_eps="auto"`` (its default) and
    without ``select`` also gets the next ``retain_batches`` training batches as held-out data, on which it chooses
    between its clean and its adversarial edit (its ``selection`` is kept in ``results``).

    Logged (``robust/...``): ``clean``, ``pgd``, ``corruption/<name>``, ``edit_success``, ``edit_pgd``,
    ``held_out`` of the original model; for the single ``editor`` the same with ``edited/`` and ``change/`` prefixes
    and ``collateral_shift`` (non-edit images moved to the edit label); for each entry of ``editors`` the same
    under ``<label>/``. The results are kept in ``self.results`` and printed as one table.

    Args:
        editor: any editor (:mod:`lightning_edit.edit`) or None (report on the model only).
        editors: more editors by name, for a side-by-side table: ``[{"name": "finetune", "label": "ft hidden",
            "layers": ["hidden"]}, {"name": "low_rank", "layer": "hidden", "rank": 1}]`` (``label`` defaults to
            the name; the other keys are the editor's arguments, see :func:`lightning_edit.edit.make_editor`).
        num_edits: size of the edit set.
        edit_class: only misclassified samples of this class.
        eps: L∞ PGD budget in pixel units ([0, 1] images); pgd_steps: its iterations.
        eval_batches: validation batches used for every accuracy.
        retain_batches: training batches given as ``retain=`` to editors with a locality term (0: none).
        corruptions: name -> severity (default :data:`lightning_edit.robust.DEFAULT_CORRUPTIONS`).
        input_std: standardisation std of the inputs (default: the datamodule's ``std`` if it has one, else 1).
        inputs_targets: ``batch -> (inputs, class_indices)``.

    Raises:
        ValueError: at construction for ``eps < 0``, ``num_edits < 1``, ``retain_batches < 0``, ``eval_batches < 1``,
            ``pgd_steps < 1``, an unknown editor name or arguments it rejects, two editors with the same label, or
            ``num_edits`` / ``edit_class`` / ``retain_batches`` set away from their defaults without any editor,
            or ``retain_batches`` set when no editor takes retain data (they would do nothing).
    """

    def __init__(
        self, editor: Editor | None = None, editors: list[dict[str, Any]] | None = None, num_edits: int = 16,
        edit_class: int | None = None, eps: float = 0.1, pgd_steps: int = 10, eval_batches: int = 4,
        retain_batches: int = 8, corruptions: dict[str, float] | None = None, input_std: float | None = None,
        inputs_targets: InputsTargets | None = None,
    ) -> None:
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}.")
        if num_edits < 1:
            raise ValueError(f"num_edits must be >= 1, got {num_edits}.")
        if retain_batches < 0:
            raise ValueError(f"retain_batches must be >= 0, got {retain_batches}.")
        if eval_batches < 1 or pgd_steps < 1:
            raise ValueError(f"Need eval_batches >= 1 and pgd_steps >= 1, got {eval_batches}, {pgd_steps}.")
        if editor is None and not editors:
            unread = [f"{name}={value}" for name, value, default in
                      (("num_edits", num_edits, 16), ("edit_class", edit_class, None), ("retain_batches", retain_batches, 8))
                      if value != default]
            if unread:
                raise ValueError(f"{', '.join(unread)} shape the edit set, but no editor is given (editor=None, no "
                                 "editors), so nothing is edited; pass an editor or drop them.")
        self.editors: dict[str, Editor] = {} if editor is None else {"edited": editor}
        for spec in editors or []:
            args = dict(spec)
            if "name" not in args:
                raise ValueError(f"Each entry of editors needs a 'name' (one of {sorted(EDITORS)}); got {spec}.")
            name = args.pop("name")
            label = str(args.pop("label", name))
            if label in self.editors:
                raise ValueError(f"Two editors are labelled {label!r}; give each a distinct 'label'.")
            self.editors[label] = make_editor(name, **args)
        takes_retain = [label for label, e in self.editors.items() if _reads_retain(e)]
        if self.editors and not takes_retain and retain_batches not in (0, 8):
            raise ValueError(f"retain_batches={retain_batches} feeds the editors' locality term, but none of "
                             f"{sorted(self.editors)} reads retain data (the gradient and metanetwork editors do not, "
                             "nor any editor with locality_coef=0); drop it or add a finetune / interpolation / "
                             "low_rank editor with a locality term.")
        self.editor, self.num_edits, self.edit_class, self.eps = editor, num_edits, edit_class, eps
        self.pgd_steps, self.eval_batches, self.corruptions, self.input_std = pgd_steps, eval_batches, corruptions, input_std
        self.retain_batches = retain_batches
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
        metrics: dict[str, float] = {}
        try:
            edit_x, edit_y, held_x, held_y = self._edit_sets(model, batches) if self.editors else (None,) * 4
            base = robustness_report(model, batches, edit_x=edit_x, edit_y=edit_y, held_out_x=held_x,
                                     held_out_y=held_y, **kw)
            self.results = {"original": base}
            metrics.update({f"robust/{k}": v for k, v in base.items()})
            if edit_x is not None:
                retain, select = self._retain(trainer, pl_module)
                for label, editor in self.editors.items():
                    kwargs = {"retain": retain} if _reads_retain(editor) and retain else {}
                    if kwargs and select and _selects(editor):
                        kwargs["select"] = select
                    edited, result = editor.edit(model, edit_x, edit_y, **kwargs)
                    after = robustness_report(edited, batches, edit_x=edit_x, edit_y=edit_y, held_out_x=held_x,
                                              held_out_y=held_y, **kw)
                    shift = collateral_shift(model, edited, batches, int(torch.mode(edit_y.cpu()).values))
                    entry = {"edited": after, "change": report_change(after, base), "collateral_shift": shift,
                             "edit": dataclasses.asdict(result)}
                    if getattr(editor, "selection", None) is not None:
                        entry["selection"] = editor.selection
                    prefix = "robust/" if label == "edited" else f"robust/{label}/"
                    metrics.update({f"{prefix}edited/{k}": v for k, v in after.items()})
                    metrics.update({f"{prefix}change/{k}": v for k, v in entry["change"].items()})
                    metrics[f"{prefix}collateral_shift"] = shift
                    if label == "edited":
                        self.results.update(entry)
                    self.results.setdefault("editors", {})[label] = entry
        finally:
            model.train(was_training)
        log_metrics(trainer, pl_module, metrics, in_loop=False)
        self._print()
        return self.results

    def _retain(self, trainer: L.Trainer, pl_module: L.LightningModule
                ) -> tuple[list[tuple[Tensor, Tensor]] | None, list[tuple[Tensor, Tensor]] | None]:
        """``(retain, select)``: the first ``retain_batches`` training batches, and the next ones of the same pass
        (held-out data) when an editor chooses on them; None where there are none."""
        loader = stage_loader(trainer, "train") if self.retain_batches else None
        if loader is None:
            return None, None
        n = self.retain_batches
        wanted = 2 * n if any(_selects(e) for e in self.editors.values()) else n
        batches = list(device_batches(loader, self._inputs_targets, pl_module.device, wanted))
        return batches[:n] or None, batches[n:] or None

    def _edit_sets(self, model: torch.nn.Module, batches: list[tuple[Tensor, Tensor]]):
        """``(edit_x, edit_y, held_x, held_y)``: the first ``num_edits`` misclassified samples and the rest."""
        model.eval()
        xs, ys = [], []
        with torch.no_grad():
            for x, y in batches:
                wrong = model(x).argmax(-1) != y
                if self.edit_class is not None:
                    wrong &= y == self.edit_class
                xs.append(x[wrong])
                ys.append(y[wrong])
        x, y = torch.cat(xs), torch.cat(ys)
        if len(x) == 0:
            rank_zero_warn("RobustEditReport: no misclassified validation sample to edit; reporting the model only.")
            return None, None, None, None
        n = self.num_edits
        return x[:n], y[:n], x[n:], y[n:]

    @rank_zero_only
    def _print(self) -> None:
        from rich.console import Console
        from rich.table import Table

        original, editors = self.results.get("original", {}), self.results.get("editors", {})
        table = Table(title="Robustness: original model, then each edited model (accuracy; Δ in points)")
        columns = [k for k in ("edit_success", "held_out", "clean", "pgd", "edit_pgd") if k in original]
        columns += [k for k in original if k.startswith("corruption/")]
        table.add_column("model")
        for col in columns + ["collateral shift", "steps"]:
            table.add_column(col, justify="right")
        table.add_row("original", *[f"{original[c]:.3f}" for c in columns], "", "")
        for label, entry in editors.items():
            cells = []
            for c in columns:
                value, delta = entry["edited"].get(c), entry["change"].get(c)
                cells.append("" if value is None else f"{value:.3f} ({100 * delta:+.1f})")
            table.add_row(label, *cells, f"{entry['collateral_shift']:.1%}", str(entry["edit"]["steps"]))
        Console().print(table)


def _selects(editor: Any) -> bool:
    """Whether ``editor`` chooses its edit on held-out data it was not given (``adversarial_eps="auto"``)."""
    return (_reads_retain(editor) and "select" in inspect.signature(editor.edit).parameters
            and getattr(editor, "adversarial_eps", None) == "auto" and getattr(editor, "select", None) is None)


def _reads_retain(editor: Any) -> bool:
    """Whether ``editor.edit`` takes ``retain=`` and its locality term is on (``locality_coef > 0``)."""
    return "retain" in inspect.signature(editor.edit).parameters and getattr(editor, "locality_coef", 1.0) > 0
