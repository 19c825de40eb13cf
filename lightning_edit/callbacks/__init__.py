"""Trainer callbacks that edit the model being trained."""

from lightning_edit.callbacks.discedit_pruning import DiscEditPruning
from lightning_edit.callbacks.discedit_unlearning import DiscEditUnlearning
from lightning_edit.callbacks.robust_edit import RobustEditReport

__all__ = ["DiscEditPruning", "DiscEditUnlearning", "RobustEditReport"]
