"""Trainer callbacks that edit the model being trained."""

from lightning_edit.callbacks.discedit_pruning import DiscEditPruning
from lightning_edit.callbacks.discedit_unlearning import DiscEditUnlearning

__all__ = ["DiscEditPruning", "DiscEditUnlearning"]
