"""lightning_edit: edit trained networks from PyTorch Lightning.

DISCEDIT structured pruning as a Trainer callback (:class:`lightning_edit.callbacks.DiscEditPruning`),
reference models (:mod:`lightning_edit.models`), real-data DataModules (:mod:`lightning_edit.data`)
and a generic :class:`ClassifierModule`.
"""

from lightning_edit.module import ClassifierModule

__version__ = "0.1.0"
__all__ = ["ClassifierModule", "__version__"]
