"""Trainer callbacks that edit the model being trained."""

from lightning_edit.callbacks.discedit_pruning import DiscEditPruning

__all__ = ["DiscEditPruning"]
