"""Editable Training (Sinitsin, Plokhotnyuk, Pyrkin, Popov, Babenko; ICLR 2020): editors and edit metrics.

Pure torch; the LightningModule is :class:`lightning_edit.EditableModule`.
"""

from lightning_edit.editable.editors import (
    EditResult, GradientEditor, check_edit, default_editable_parameters, edit_loss, select_parameters,
)
from lightning_edit.editable.metrics import EditMetrics, drawdown, error_rate, evaluate_edits, random_wrong_labels

__all__ = [
    "EditResult", "GradientEditor", "check_edit", "default_editable_parameters", "edit_loss", "select_parameters",
    "EditMetrics", "drawdown", "error_rate", "evaluate_edits", "random_wrong_labels",
]
