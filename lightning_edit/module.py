"""``ClassifierModule``: a LightningModule around any ``nn.Module`` classifier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_edit.discedit.structured import enable_edit_reload


class ClassifierModule(L.LightningModule):
    """Cross-entropy classification of ``(x, y)`` batches with torchmetrics accuracy.

    Logs ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``, ``test_loss``, ``test_acc``
    (top-1, micro-averaged) and, with ``per_class_accuracy``, ``val_acc_class/<c>`` and
    ``test_acc_class/<c>``. Subclass it for your own model (override ``__init__`` to build
    ``self.model``) or give ``model`` by class path in YAML.

    A checkpoint of a model pruned by :class:`~lightning_edit.callbacks.DiscEditPruning` reloads into a
    fresh module: the state dict carries the pruning record, replayed before the weights load
    (:func:`lightning_edit.discedit.enable_edit_reload`).

    Args:
        model: the classifier, ``(N, ...) -> (N, num_classes)`` logits.
        num_classes: number of classes K.
        optimizer: a callable ``params -> Optimizer`` (LightningCLI: ``optimizer:`` in YAML). Default Adam(lr=1e-3).
        lr_scheduler: optional callable ``optimizer -> LRScheduler``.
        per_class_accuracy: also log per-class accuracy on validation and test.
        weights: path of a checkpoint (a Lightning ``.ckpt`` or a plain state dict saved with ``torch.save``)
            whose weights initialise this module: weights only, so the Trainer starts at epoch 0 with a fresh
            optimizer (``--model.init_args.weights trained.ckpt`` to edit a trained checkpoint; compare
            ``ckpt_path=``, which resumes the whole training state). Pruned and masked checkpoints load too.
            Only load files you trust (they are unpickled).

    Raises:
        ValueError: if ``num_classes < 2``.
        FileNotFoundError: if ``weights`` does not exist.
        RuntimeError: if ``weights`` does not fit the model (missing or unexpected keys, other shapes).

    Example::

        module = ClassifierModule(SmallCNN(1, 10), num_classes=10)
        trainer = L.Trainer(max_epochs=5, callbacks=[DiscEditPruning(sparsity=0.5, prune_epoch=2)])
        trainer.fit(module, datamodule=DigitsDataModule())
        # reload: ClassifierModule.load_from_checkpoint(path, model=SmallCNN(1, 10))
    """

    _object_hparams: tuple[str, ...] = ("model", "optimizer", "lr_scheduler")
    """Arguments that are objects: left out of ``hparams`` outside LightningCLI (pass them to ``load_from_checkpoint``)."""

    def __init__(
        self,
        model: nn.Module,
        num_classes: int = 10,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        per_class_accuracy: bool = False,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        given = _given_hyperparameters.get()  # set by LightningCLI: objects are configs there, kept as hparams
        # `weights` only initialises: a saved checkpoint holds the weights themselves and must not point back to it.
        self.save_hyperparameters(ignore=["weights"] if given and "model" in given else [*self._object_hparams, "weights"])
        self.model = model
        self.num_classes = num_classes
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        self.per_class_accuracy = per_class_accuracy
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        if per_class_accuracy:
            self.val_acc_class = MulticlassAccuracy(num_classes, average=None)
            self.test_acc_class = MulticlassAccuracy(num_classes, average=None)
        enable_edit_reload(self)
        if weights is not None:
            self.load_weights(weights)

    def load_weights(self, path: str) -> None:
        """Load the weights of the checkpoint or state dict at ``path`` into this module (strict).

        Raises:
            FileNotFoundError: if there is no file at ``path``.
            RuntimeError: if its keys or shapes do not fit this module.
        """
        if not Path(path).is_file():
            raise FileNotFoundError(f"weights={path!r}: no such file. Give the path of a .ckpt or a saved state dict.")
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
        try:
            self.load_state_dict(state)
        except RuntimeError as err:
            raise RuntimeError(f"weights={path!r} do not fit this module's model: {err}") from err

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.train_acc(logits.argmax(1), y)  # class indices: a model specialised to k < K classes is measured too
        self.log("train_loss", loss, prog_bar=True)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def _eval_step(self, batch: Any, stage: str) -> None:
        x, y = batch
        logits = self(x)
        self.log(f"{stage}_loss", F.cross_entropy(logits, y), prog_bar=True)
        acc = getattr(self, f"{stage}_acc")
        acc(logits.argmax(1), y)
        self.log(f"{stage}_acc", acc, prog_bar=True)
        if self.per_class_accuracy:
            getattr(self, f"{stage}_acc_class").update(logits.argmax(1), y)

    def _log_per_class(self, stage: str) -> None:
        if self.per_class_accuracy:
            metric = getattr(self, f"{stage}_acc_class")
            self.log_dict({f"{stage}_acc_class/{c}": v for c, v in enumerate(metric.compute())})
            metric.reset()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_per_class("val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_per_class("test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}
