"""lightning_edit: edit trained networks from PyTorch Lightning.

DISCEDIT structured pruning as a Trainer callback (:class:`lightning_edit.callbacks.DiscEditPruning`),
reference models (:mod:`lightning_edit.models`), real-data DataModules (:mod:`lightning_edit.data`)
a generic :class:`ClassifierModule`, and Editable Training as :class:`EditableModule`.
"""

from lightning_edit.editable_module import EditableModule
from lightning_edit.module import ClassifierModule

__version__ = "0.1.0"
__all__ = ["ClassifierModule", "EditableModule", "__version__"]
