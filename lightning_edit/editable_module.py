"""``EditableModule``: Editable Training (Sinitsin et al., ICLR 2020) as a LightningModule."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from lightning_edit.editable.editors import EditResult, GradientEditor, default_editable_parameters, edit_loss, select_parameters
from lightning_edit.editable.metrics import EditMetrics, evaluate_edits, random_wrong_labels
from lightning_edit.module import ClassifierModule


class EditableModule(ClassifierModule):
    """Train a classifier so that a few gradient steps fix a wrong prediction without hurting the rest.

    Objective (paper Eq. 4; METHODS.md Sec. 2):
    ``L = CE(batch) + edit_coef · l_e(Edit_k(θ)) + locality_coef · KL(p(·|x, θ) ‖ p(·|x, Edit_k(θ)))``.
    Each step edits ``edits_per_step`` random images of the training batch to uniformly random labels (a
    label that already holds costs no step), applies the editor *differentiably* (``torch.func.functional_call``
    on updated tensors, the module is never mutated) in eval mode, and back-propagates through its steps.
    The editor's β (and lr, if ``learn_lr``) is trained with the model. The locality KL compares the edited
    model (eval mode) with the training forward's own predictions, detached, as the authors' code does (no
    extra forward per step).

    Defaults are the authors' protocol (github xtinkt/editable, CIFAR-10): RMSProp editor, lr 1e-3, learned
    β = 0.5, k = 10; one inner block edited (:func:`~lightning_edit.editable.default_editable_parameters`:
    ``layer3`` of a CIFAR ResNet, never the head); c_edit = c_loc = 0.01; Adam; gradient-norm clip 10
    (``max_grad_norm``, used when the Trainer sets no ``gradient_clip_val``).

    Every validation epoch, ``val_edits`` held-out samples are edited to fixed random wrong labels (each an
    edit of the current model) and ``edit/success_rate``, ``edit/mean_steps``, ``edit/drawdown`` (mean
    increase of validation error, in [0, 1]) and ``edit/base_error`` are logged
    (:func:`~lightning_edit.editable.evaluate_edits`).

    Args:
        model, num_classes, optimizer, lr_scheduler, per_class_accuracy: see :class:`ClassifierModule`.
        editor: the :class:`~lightning_edit.editable.GradientEditor` (default: the authors' RMSProp editor).
        editable_parameters: ``fnmatch`` patterns of the wrapped model's parameter names that edits may change
            (e.g. ``["layer3.*"]``); ``"auto"``: the editor's own ``editable_parameters`` when it has them, else
            one inner block, as the authors; None: all.
        edit_coef, locality_coef: c_edit and c_loc (0.01 each in the authors' code).
        edits_per_step: edit samples drawn from each training batch (edited together).
        train_edit_steps: editor steps during training (default: the editor's ``max_steps``). They run without
            early stopping, each gated by "edit not yet satisfied": the same update, no host sync.
        max_grad_norm: outer gradient-norm clip when the Trainer sets none (None: no clip).
        locality_reference: the unedited predictions the locality KL compares with: ``"train"``, the training
            forward's own logits (the authors' code; no extra forward, but train-mode BatchNorm against the
            eval-mode edited model); ``"eval"``, one extra no-grad forward in eval mode (like against like).
            Measured (ResNet-20, Fashion-MNIST, 3 epochs): ``"eval"`` with a learned editor lr collapsed the model to
            89% test error; ``"train"`` did not.
        val_edits: edits evaluated each validation epoch (0 disables), the first samples of the first
            ``val_drawdown_batches`` validation batches (a warning when they hold fewer).
        val_drawdown_batches: validation batches on which drawdown is measured.
        seed: seed of the validation edit targets.

    Raises:
        ValueError: if ``editable_parameters`` match nothing or none requires grad (at construction and setup),
            for negative coefficients / ``edits_per_step < 1`` / ``train_edit_steps < 1`` / ``max_grad_norm <= 0``
            / ``val_edits < 0`` / ``val_drawdown_batches < 1`` with validation edits, or if ``"auto"`` finds no
            inner block. Arguments that could not take effect are errors too: ``locality_reference="eval"`` with
            ``locality_coef=0``; ``edits_per_step`` or ``train_edit_steps`` when both coefficients are 0 (no edit
            is made in training); an editor whose own ``editable_parameters`` differ from explicit module ones.
    """

    _object_hparams = ("model", "optimizer", "lr_scheduler", "editor")

    def __init__(
        self,
        model: nn.Module,
        num_classes: int = 10,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        per_class_accuracy: bool = False,
        editor: GradientEditor | None = None,
        editable_parameters: list[str] | str | None = "auto",
        edit_coef: float = 0.01,
        locality_coef: float = 0.01,
        edits_per_step: int = 1,
        train_edit_steps: int | None = None,
        max_grad_norm: float | None = 10.0,
        locality_reference: Literal["train", "eval"] = "train",
        val_edits: int = 16,
        val_drawdown_batches: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__(model, num_classes, optimizer, lr_scheduler, per_class_accuracy)
        if edit_coef < 0 or locality_coef < 0 or edits_per_step < 1:
            raise ValueError(
                f"Need edit_coef, locality_coef >= 0 and edits_per_step >= 1, got {edit_coef}, {locality_coef}, {edits_per_step}."
            )
        if locality_reference not in ("train", "eval"):
            raise ValueError(f"locality_reference must be 'train' or 'eval', got {locality_reference!r}.")
        self.locality_reference = locality_reference
        if max_grad_norm is not None and max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be positive or None, got {max_grad_norm}.")
        if train_edit_steps is not None and train_edit_steps < 1:
            raise ValueError(f"train_edit_steps must be >= 1 (or None: the editor's max_steps), got {train_edit_steps}.")
        if val_edits < 0 or (val_edits > 0 and val_drawdown_batches < 1):
            raise ValueError(f"Need val_edits >= 0 and, when val_edits > 0, val_drawdown_batches >= 1 (the batches the "
                             f"edits are drawn from); got {val_edits}, {val_drawdown_batches}. val_edits=0 turns the "
                             "validation edits off.")
        if locality_coef == 0 and locality_reference != "train":
            raise ValueError(f"locality_reference={locality_reference!r} picks the reference of the locality term, which "
                             "locality_coef=0 turns off; drop it or set locality_coef > 0.")
        if edit_coef == 0 and locality_coef == 0 and (edits_per_step != 1 or train_edit_steps is not None):
            raise ValueError(f"edits_per_step={edits_per_step} / train_edit_steps={train_edit_steps} shape the edits made "
                             "during training, and edit_coef = locality_coef = 0 makes none (plain training); drop them "
                             "or set a coefficient > 0.")
        self.editor = editor if editor is not None else GradientEditor()
        own = getattr(self.editor, "editable_parameters", None)
        if isinstance(editable_parameters, str):
            if editable_parameters != "auto":
                raise ValueError(f"editable_parameters must be a list of patterns, 'auto' or None, got {editable_parameters!r}.")
            editable_parameters = list(own) if own is not None else default_editable_parameters(self.model)
        elif own is not None and list(own) != list(editable_parameters or []):
            raise ValueError(f"The editor's editable_parameters={list(own)} and the module's {editable_parameters} differ; "
                             "the module's would win silently. Give the patterns once: on the module, or on the editor "
                             "with the module's editable_parameters='auto'.")
        self.editable_parameters = editable_parameters
        self.max_grad_norm = max_grad_norm
        select_parameters(self.model, editable_parameters)
        self.edit_coef, self.locality_coef, self.edits_per_step = edit_coef, locality_coef, edits_per_step
        self.train_edit_steps, self.val_edits, self.val_drawdown_batches = train_edit_steps, val_edits, val_drawdown_batches
        self.seed = seed
        self._val_cache: list[tuple[Tensor, Tensor]] = []

    def setup(self, stage: str) -> None:
        select_parameters(self.model, self.editable_parameters)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.train_acc(logits, y)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True)
        if self.edit_coef > 0 or self.locality_coef > 0:
            edit_term, locality_term = self.edit_losses(x, logits if self.locality_reference == "train" else None)
            loss = loss + self.edit_coef * edit_term + self.locality_coef * locality_term
            self.log_dict({"train_edit_loss": edit_term, "train_locality_loss": locality_term,
                           "editor_lr": self.editor.lr, "editor_beta": self.editor.beta})
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if gradient_clip_val is None and self.max_grad_norm is not None:
            gradient_clip_val, gradient_clip_algorithm = self.max_grad_norm, "norm"
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def edit_losses(self, x: Tensor, reference_logits: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Edit loss left after the editor and locality KL on ``x``, both differentiable w.r.t. θ (and the editor).

        Args:
            x: ``(B, ...)`` training batch; the edit inputs are drawn from it.
            reference_logits: ``(B, K)`` the unedited model's logits on ``x`` (detached here). The training step
                passes its own forward with ``locality_reference="train"``, as the authors' code does. None: one
                no-grad forward in eval mode.

        Returns:
            ``(mean edit loss left after the editor (nats), KL(original ‖ edited) on x (nats))``.
        """
        idx = torch.randint(0, len(x), (self.edits_per_step,), device=x.device)
        targets = torch.randint(0, self.num_classes, (self.edits_per_step,), device=x.device)
        edit_x = x[idx]
        params = select_parameters(self.model, self.editable_parameters)
        was_training = self.model.training
        self.model.eval()
        # the outer loss differentiates through the inner edit steps; torch's fused attention kernels have no second
        # derivative on CPU ("derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is not
        # implemented"), the math kernel does
        with sdpa_kernel(SDPBackend.MATH):
            return self._edit_losses(x, idx, targets, edit_x, params, was_training, reference_logits)

    def _edit_losses(self, x, idx, targets, edit_x, params, was_training, reference_logits) -> tuple[Tensor, Tensor]:
        try:
            edited, _, remaining = self.editor.run(
                params, lambda ps: edit_loss(functional_call(self.model, ps, (edit_x,)), targets),
                create_graph=True, early_stop=False, max_steps=self.train_edit_steps,
            )
            after = torch.log_softmax(functional_call(self.model, edited, (x,)), -1)
            if reference_logits is None:
                with torch.no_grad():
                    reference_logits = self.model(x)
        finally:
            self.model.train(was_training)
        original = torch.log_softmax(reference_logits.detach().float(), -1)
        locality = F.kl_div(after.float(), original, log_target=True, reduction="batchmean")
        return remaining.mean(), locality

    def edit(self, x: Tensor, y_target: Tensor, max_steps: int | None = None) -> tuple[nn.Module, EditResult]:
        """An edited copy of the wrapped classifier that predicts ``y_target`` on ``x`` (the module is untouched).

        Shapes: ``x (B, ...)``, ``y_target (B,)``. See :meth:`GradientEditor.edit` for the errors raised.
        """
        return self.editor.edit(self.model, x, y_target, self.editable_parameters, self.num_classes, max_steps)

    def edit_metrics(self, edit_x: Tensor, edit_y: Tensor, test_batches: list[tuple[Tensor, Tensor]]) -> EditMetrics:
        """Success rate, mean steps and drawdown of editing each sample of ``edit_x`` to ``edit_y``."""
        with torch.inference_mode(False), torch.enable_grad():
            return evaluate_edits(self.model, self.editor, edit_x, edit_y, test_batches, self.editable_parameters)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        if self.val_edits and batch_idx < self.val_drawdown_batches:
            self._val_cache.append((batch[0].clone(), batch[1].clone()))

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        cache, self._val_cache = self._val_cache, []
        if not cache or self.trainer.sanity_checking:
            return
        with torch.inference_mode(False):
            cache = [(x.clone(), y.clone()) for x, y in cache]
            edit_x = torch.cat([x for x, _ in cache])[: self.val_edits]
            y = torch.cat([t for _, t in cache])[: self.val_edits]
            if len(edit_x) < self.val_edits and not getattr(self, "_warned_few_edits", False):
                self._warned_few_edits = True
                rank_zero_warn(f"EditableModule: val_edits={self.val_edits}, but the first val_drawdown_batches="
                               f"{self.val_drawdown_batches} validation batches hold {len(edit_x)} samples; measuring "
                               f"{len(edit_x)} edits. Raise val_drawdown_batches for more.")
            edit_y = random_wrong_labels(y.cpu(), self.num_classes, torch.Generator().manual_seed(self.seed)).to(y.device)
            m = self.edit_metrics(edit_x, edit_y, cache)
        self.log_dict({"edit/success_rate": m.success_rate, "edit/mean_steps": m.mean_steps,
                       "edit/drawdown": m.drawdown, "edit/base_error": m.base_error}, sync_dist=True)
        self.last_edit_metrics = m

    def on_fit_end(self) -> None:
        m = getattr(self, "last_edit_metrics", None)
        if m is not None and self.trainer.is_global_zero:
            from rich.console import Console
            from rich.table import Table

            table = Table(title=f"Editable Training: {m.num_edits} validation edits (last epoch)")
            for col in ("base error", "edit success", "mean steps", "drawdown"):
                table.add_column(col, justify="right")
            table.add_row(f"{m.base_error:.2%}", f"{m.success_rate:.2f}", f"{m.mean_steps:.2f}", f"{100 * m.drawdown:+.2f} pt")
            Console().print(table)
