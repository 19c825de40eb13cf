"""DISCEDIT-SP as a Trainer callback: structured pruning of non-discriminative channels at epoch boundaries.

Murti & Bhattacharyya, "DISCEDIT: Model Editing by Identifying Discriminative Components",
NeurIPS 2024 (Sec. 4, DISCEDIT-SP). A channel whose class-conditional feature distributions are
close in total variation for *every* class (low ``min_c TV-bound(P_c, Q_c)``) carries no class
information and is removed; torch-pruning removes it physically from every coupled layer.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from typing_extensions import override

from lightning_edit.callbacks._common import (
    EpochSpec,
    InputsTargets,
    check_edit_epoch,
    check_epoch_in_run,
    check_start_edit_ran,
    default_inputs_targets,
    device_batches,
    evaluate_accuracy,
    forget_checkpoint_scores_before_edit,
    is_fast_dev_run,
    is_last_train_batch,
    log_metrics,
    output_dir,
    probe_classifier,
    say_fast_dev_run,
    stage_loader,
)
from lightning_edit.discedit.prune import (
    IMPORTANCES,
    NEEDS_GRADIENTS,
    SPARSITY_TYPES,
    channel_scores,
    max_sparsity,
    prune_channels,
)
from lightning_edit.discedit.recalibrate import recalibrate_batchnorm
from lightning_edit.discedit.select import CANDIDATES, check_candidates, prune_with, selection_accuracy
from lightning_edit.discedit.scores import check_discedit_options, check_random_seed, get_witness
from lightning_edit.discedit.subset import check_classes, keep_classes, output_layer
from lightning_edit.discedit.structured import (
    attention_items,
    attention_shapes,
    build_dependency_graph,
    channel_groups,
    component_count,
    count_macs_params,
    enable_edit_reload,
    is_head_attention,
    prunable_layers,
    target_width,
)


class DiscEditPruning(Callback):
    """Prune the least discriminative channels of the model at the end of chosen training epochs.

    When: at a pruning epoch the edit happens right after the epoch's last training batch, *before* that
    epoch's validation, so the validation metrics and every checkpoint of that epoch describe the pruned
    model. After each prune, every ``ModelCheckpoint`` that monitors a metric forgets its best-k ranking
    (said in the log): a score measured on the model before the edit never ranks the edited model, and the
    "best" checkpoint after fit is the best *pruned* one. ``prune_epoch="start"`` prunes once before the first
    training batch of the fit, for a model that is already trained (loaded weights, or ``ckpt_path``); the
    remaining epochs fine-tune it.

    At each pruning step: collect class-conditional moments of every prunable layer's channels over
    ``calibration_batches`` batches (forward hooks, float64, summed across DDP ranks), turn them into
    TV lower bounds with the chosen witness, score each channel by its worst class, remove the
    lowest-scored channels with torch-pruning, and rebuild the optimizers so training continues on
    the smaller model. Logs ``discedit/sparsity`` (fraction of prunable channels removed),
    ``discedit/params``, ``discedit/macs``, ``discedit/acc_before`` and ``discedit/acc_after``; at the
    end of fit prints a per-layer table and saves ``discedit_pruning.png`` in the log directory.

    Args:
        sparsity: final fraction to remove, in [0, 1): of each layer's channels (``sparsity_type="channels"``)
            or of the model's parameters (``"parameters"``) or MACs (``"macs"``), those two reached by bisection on
            the channel fraction.
        sparsity_type: ``"channels"``, ``"parameters"`` or ``"macs"`` (a target that ``min_channels`` makes
            unreachable is an error at the prune, before the model changes, naming the reachable maximum).
        prune_epoch: prune at the end of this (0-based) training epoch (before its validation), or ``"start"``:
            once, before the first training batch of this fit (edit a trained checkpoint, then fine-tune).
        end_epoch: if given, prune gradually at the end of every epoch from ``prune_epoch`` to ``end_epoch``
            following ``schedule``; each step rescores the already pruned model. Not with ``"start"``.
        schedule: ``"linear"`` or ``"cubic"`` (Zhu & Gupta 2018) sparsity ramp for gradual pruning.
        witness: a name in :data:`lightning_edit.discedit.WITNESS_FUNCTIONS` (``"fisher"``: linear witness on
            ``[s, s²]``, the default; ``"fisher_linear"``, ``"fisher_energy"`` (``[s, mean of the squared map]``,
            which sees zero-sum filters; see :func:`~lightning_edit.discedit.component_features`),
            ``"robust_fisher"``, ``"mpm"``, ``"exp_norm"``).
        importance: ``"discedit"``, ``"auto"`` (choose among ``candidates`` on held-out data, below), or a baseline
            on the same machinery: ``"l1"`` (filter L1 norm), ``"random"``, or
            one of torch-pruning's criteria (``"tp_l1"``, ``"tp_l2"``, ``"taylor"`` (gradients of the cross-entropy
            on the calibration batches), ``"bn_scale"``, ``"lamp"``; :data:`~lightning_edit.discedit.prune.TORCH_PRUNING_IMPORTANCES`).
        feature_site: where DISCEDIT reads a channel's map: ``"conv"`` (the layer output, before BatchNorm and
            ReLU; the authors' pruning code) or ``"activation"`` (after them: the map the next layer consumes).
        calibration_batches: batches used for the moments (None: the whole loader).
        calibration_source: ``"train"`` or ``"val"`` loader of the running fit.
        layers: ``fnmatch`` patterns of module names relative to the LightningModule (e.g.
            ``["model.features.*"]``); default every Conv2d/Linear except the last (classifier). Layers
            coupled to a selected one (residual streams) are pruned with it.
        scope: ``"layer"`` (every layer loses the same fraction, as the authors' code) or ``"global"``
            (one ranking across layers, same total; each layer's scores are divided by their layer mean first,
            since TV bounds differ in scale between layers).
        min_channels: no layer goes below this width. If None, a layer that the sparsity would prune to
            zero width is an error at setup.
        recalibrate_bn: after each prune, reset and re-estimate every BatchNorm's running statistics on
            ``recalibration_batches`` batches of the calibration loader (cumulative average, averaged across DDP
            ranks; adaptive BN, Li et al. 2020). Without it, removing channels leaves the next BatchNorms'
            statistics stale and accuracy right after the prune falls to chance on BN networks. A model without
            BatchNorm: nothing to do (said once in the log).
        recalibration_batches: batches for the recalibration (None: ``calibration_batches``).
        evaluate: measure accuracy on the validation loader right before and after each prune (after the prune
            and after the recalibration, when both apply).
        inputs_targets: ``batch -> (inputs, class_indices)``; default handles ``(x, y, ...)`` and dict batches.
        plot: save the plot at the end of fit.
        seed: seed of the random baseline.
        redundancy: > 0 keeps relevance and discounts redundancy within each layer (greedy mRMR, gain
            ``bound_j - redundancy · mean |ρ|`` to the channels kept; :mod:`lightning_edit.discedit.redundancy`), a
            departure from the paper; its correlations share the moments' pass; layer scope only. Measured
            (README): on VGG-11 after BN + ReLU it gains 1-13 points; on ResNet-20, whose residual groups sum the
            greedy orders of several layers, it does not help.
        candidates: with ``importance="auto"``: names of :data:`lightning_edit.discedit.CANDIDATES` (default: DISCEDIT
            at both feature sites, torch-pruning's L2, BN scale, LAMP with a global ranking, Taylor). At the first
            prune step each candidate prunes a copy of the model to the step's sparsity, the copy's BatchNorm
            statistics are re-estimated on the calibration batches, and it is measured on the selection split; the
            most accurate is applied (ties: the earlier one), a rich table and ``discedit/auto/<name>`` show every
            candidate. The choice is made **once**, at the first step, and kept by later steps of a gradual schedule
            and across a resume (it is in the callback's state). Accuracies are summed across DDP ranks, so every rank
            chooses the same. Its cost is one scoring, pruning and recalibration per candidate (seconds per candidate
            in ``self.selection``).
        selection_source: the loader of the selection split, ``"val"`` (default: the validation loader, never the
            test set) or ``"train"``; it must differ from ``calibration_source``.
        selection_batches: batches of the selection loader to measure on (None: all of it).
        classes: class-subset specialisation (:mod:`lightning_edit.discedit.subset`), with ``prune_epoch="start"``:
            before scoring, the classifier keeps only the rows of these original classes, in this order (the model
            then outputs ``len(classes)`` logits); DISCEDIT's bounds are one-vs-rest within the subset. Every loader
            (calibration, recalibration, selection, fine-tuning) must yield only those classes' samples, labelled
            by position (``classes[j] -> j``): :class:`~lightning_edit.data.TensorDataModule` does this with
            ``classes=[...], relabel=True``. The checkpoint saves the class list in its pruning record and reloads
            into the original architecture (:func:`~lightning_edit.discedit.enable_edit_reload`).

    Raises:
        ValueError: at construction for a sparsity outside [0, 1), an unknown witness, importance, scope,
            schedule or sparsity type, ``end_epoch < prune_epoch``, ``end_epoch`` with ``"start"``, ``classes`` with
            fewer than 2 entries, duplicates, or without ``prune_epoch="start"`` (and at ``setup``, a class outside
            the model's outputs),
            ``min_channels < 1``, an argument that could not take effect (a non-default ``witness`` or
            ``feature_site`` with another ``importance``, a non-linear ``schedule`` for a single prune step,
            ``recalibration_batches`` with ``recalibrate_bn=False``, a ``seed`` other than 0 with an importance other
            than ``"random"``, ``redundancy`` with another importance or with ``scope="global"``); at ``setup`` for a model with no prunable
            layer, a pruning epoch at or past ``trainer.max_epochs`` (it would never run), an empty calibration loader, calibration targets that
            are not class indices (or exceed the model's outputs), or a layer that would be pruned to zero
            width; at a prune, before the model changes, for non-finite (NaN/inf) calibration statistics or
            scores (the message names the first such layer).

    Example::

        trainer = L.Trainer(max_epochs=6, callbacks=[DiscEditPruning(sparsity=0.5, prune_epoch=2)])
        trainer.fit(ClassifierModule(SmallCNN(1, 10)), datamodule=DigitsDataModule())

    Missing classes: a class absent from the calibration batches is skipped with a warning (scores use the
    classes present); fewer than two classes present is an error at prune time, before the model changes.
    """

    def __init__(
        self,
        sparsity: float = 0.5,
        sparsity_type: Literal["channels", "parameters", "macs"] = "channels",
        prune_epoch: EpochSpec = 0,
        end_epoch: int | None = None,
        schedule: Literal["linear", "cubic"] = "linear",
        witness: str = "fisher",
        importance: str = "discedit",
        feature_site: Literal["conv", "activation"] = "conv",
        calibration_batches: int | None = 16,
        calibration_source: Literal["train", "val"] = "train",
        layers: list[str] | None = None,
        scope: Literal["layer", "global"] = "layer",
        min_channels: int | None = None,
        recalibrate_bn: bool = True,
        recalibration_batches: int | None = None,
        evaluate: bool = True,
        inputs_targets: InputsTargets | None = None,
        plot: bool = True,
        seed: int = 0,
        redundancy: float = 0.0,
        candidates: list[str] | None = None,
        selection_source: Literal["train", "val"] = "val",
        selection_batches: int | None = None,
        classes: list[int] | None = None,
    ) -> None:
        self.classes = check_classes(classes) if classes is not None else None
        if classes is not None and prune_epoch != "start":
            raise ValueError(
                f"classes={classes} specialises a trained model before training goes on: its data are labelled 0..k-1 "
                "(classes[j] -> j), which the unpruned model would misread. Use prune_epoch='start' with a trained "
                "checkpoint (data: e.g. FashionMNISTDataModule(classes=..., relabel=True)).")
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}.")
        choices = {
            "sparsity_type": (sparsity_type, SPARSITY_TYPES),
            "schedule": (schedule, ("linear", "cubic")),
            "importance": (importance, (*IMPORTANCES, "auto")),
            "feature_site": (feature_site, ("conv", "activation")),
            "scope": (scope, ("layer", "global")),
            "calibration_source": (calibration_source, ("train", "val")),
            "selection_source": (selection_source, ("train", "val")),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")
        self.witness = get_witness(witness)
        check_edit_epoch(prune_epoch, "prune_epoch")
        if prune_epoch == "start" and end_epoch is not None:
            raise ValueError("prune_epoch='start' prunes once; drop end_epoch, or give an epoch index for gradual pruning.")
        if end_epoch is not None and end_epoch < prune_epoch:
            raise ValueError(f"Need 0 <= prune_epoch <= end_epoch, got prune_epoch={prune_epoch}, end_epoch={end_epoch}.")
        if min_channels is not None and min_channels < 1:
            raise ValueError(f"min_channels must be >= 1 (or None), got {min_channels}.")
        if calibration_batches is not None and calibration_batches < 1:
            raise ValueError(f"calibration_batches must be >= 1 or None, got {calibration_batches}.")
        if recalibration_batches is not None and recalibration_batches < 1:
            raise ValueError(f"recalibration_batches must be >= 1 or None, got {recalibration_batches}.")
        check_discedit_options(importance, witness=(witness, "fisher"), feature_site=(feature_site, "conv"),
                               redundancy=(redundancy, 0.0))
        if redundancy < 0:
            raise ValueError(f"redundancy must be >= 0, got {redundancy}.")
        if redundancy and scope == "global":
            raise ValueError("redundancy reorders channels within each layer and has no global ranking; use "
                             "scope='layer', or redundancy=0.")
        self.redundancy = redundancy
        check_random_seed(importance, seed)
        if importance == "auto":
            self.candidates = check_candidates(candidates)
            if scope != "layer":
                raise ValueError("importance='auto' takes each candidate's own scope (CANDIDATES); drop scope.")
            if selection_source == calibration_source:
                raise ValueError(f"importance='auto' measures the candidates on a selection split that must differ from "
                                 f"the calibration data, but both are the {calibration_source!r} loader; set "
                                 "selection_source to the other one.")
            if selection_batches is not None and selection_batches < 1:
                raise ValueError(f"selection_batches must be >= 1 or None, got {selection_batches}.")
        elif candidates is not None or selection_batches is not None or selection_source != "val":
            raise ValueError("candidates, selection_source and selection_batches are read only by importance='auto'; "
                             "drop them or set importance='auto'.")
        else:
            self.candidates = []
        self.selection_source, self.selection_batches = selection_source, selection_batches
        self.chosen: str | None = None  # the candidate importance='auto' chose (once, at the first prune)
        self.selection: dict[str, dict[str, float]] = {}
        if schedule != "linear" and (prune_epoch == "start" or end_epoch is None or end_epoch == prune_epoch):
            raise ValueError(f"schedule={schedule!r} shapes a ramp over several prune epochs; this callback prunes once. "
                             "Give end_epoch > prune_epoch, or drop schedule.")
        if recalibration_batches is not None and not recalibrate_bn:
            raise ValueError("recalibration_batches is set but recalibrate_bn=False: set recalibrate_bn=True, or drop "
                             "recalibration_batches.")
        self.sparsity, self.sparsity_type, self.schedule = sparsity, sparsity_type, schedule
        self.at_start = prune_epoch == "start"
        self.prune_epochs = [] if self.at_start else list(range(prune_epoch, (end_epoch if end_epoch is not None else prune_epoch) + 1))
        self._due = self._scheduled_steps()
        self.witness_name, self.importance, self.scope = witness, importance, scope
        self.feature_site = feature_site
        self.calibration_batches, self.calibration_source = calibration_batches, calibration_source
        self.layer_patterns, self.min_channels = layers, min_channels
        self.evaluate, self.plot, self.seed = evaluate, plot, seed
        self.recalibrate_bn = recalibrate_bn
        self.recalibration_batches = recalibration_batches if recalibration_batches is not None else calibration_batches
        self._said_no_bn = False
        self._inputs_targets = inputs_targets or default_inputs_targets
        self.events: list[dict[str, Any]] = []
        self.curve: list[dict[str, float]] = []
        self.original_widths: dict[str, int] = {}
        self.layer_widths: dict[str, int] = {}
        self.attention_shapes: dict[str, tuple[int, int]] = {}
        self.dense_macs_params: tuple[int, int] | None = None
        self.num_classes: int | None = None
        self.input_shape: list[int] | None = None

    @property
    def state_key(self) -> str:
        epochs = ("start",) if self.at_start else tuple(self.prune_epochs)
        return self._generate_state_key(sparsity=self.sparsity, epochs=epochs, witness=self.witness_name)

    def get_inputs_targets(self, batch: Any) -> tuple[Tensor, Tensor]:
        """``batch -> (inputs, class_indices)``; override in a subclass for other batch structures."""
        return self._inputs_targets(batch)

    def _scheduled_steps(self) -> dict[int, float]:
        """``{epoch: target sparsity after that epoch's prune}`` of the schedule."""
        return {e: self.step_sparsity(i) for i, e in enumerate(self.prune_epochs)}

    def step_sparsity(self, step: int) -> float:
        """Target sparsity after pruning step ``step`` (0-based) of ``len(self.prune_epochs)``."""
        frac = (step + 1) / max(1, len(self.prune_epochs))
        if self.schedule == "cubic":
            frac = 1.0 - (1.0 - frac) ** 3
        return self.sparsity * frac

    # ------------------------------------------------------------------ setup: validate early
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        enable_edit_reload(pl_module)  # a resumed checkpoint's pruning is replayed before its weights load
        if stage != "fit":
            return
        if self.prune_epochs:
            epochs = f"prune_epoch={self.prune_epochs[0]}" + (f", end_epoch={self.prune_epochs[-1]}" if len(self.prune_epochs) > 1 else "")
            if is_fast_dev_run(trainer):
                self._due = {0: self.sparsity}
                say_fast_dev_run(f"DiscEditPruning({epochs})", "those epochs",
                                 f"at the end of epoch 0's training, straight to sparsity {self.sparsity}")
            else:
                self._due = self._scheduled_steps()
                check_epoch_in_run(trainer, self.prune_epochs[-1], f"DiscEditPruning({epochs})")
        if self.importance == "auto" and stage_loader(trainer, self.selection_source) is None:
            raise ValueError(f"DiscEditPruning(importance='auto') measures the candidates on the {self.selection_source} "
                             "loader, but none is defined: give the datamodule that loader, or set selection_source.")
        if self.classes is not None and not self.events:
            check_classes(self.classes, output_layer(pl_module)[1].out_features)
        layers = prunable_layers(pl_module, self.layer_patterns)
        self.layer_widths = self.layer_widths or {n: component_count(m) for n, m in layers.items()}
        self.attention_shapes = self.attention_shapes or attention_shapes(pl_module)
        self.num_classes, self.input_shape = probe_classifier(
            trainer, pl_module, self.calibration_source, self.get_inputs_targets, "DiscEditPruning"
        )
        example = torch.zeros(self.input_shape, device=pl_module.device, dtype=next(pl_module.parameters()).dtype)
        if attention_items(pl_module):  # a named layer in a transformer's residual stream fails here, not mid-fit
            channel_groups(pl_module, build_dependency_graph(pl_module, example), layers)
        if self.sparsity_type == "macs":
            most = max_sparsity(pl_module, example, layers, "macs", self.min_channels or 1)
            if self.sparsity > most:
                raise ValueError(
                    f"DiscEditPruning(sparsity={self.sparsity}, sparsity_type='macs') cannot be reached: with "
                    f"min_channels={self.min_channels} pruning these layers removes at most {most:.3f} of the MACs. "
                    f"Ask for at most {most:.3f}, lower min_channels, or prune more layers.")
        if self.sparsity_type == "channels" and self.min_channels is None:
            zero = [n for n, w in self.layer_widths.items() if target_width(w, self.sparsity, None) < 1]
            if zero:
                raise ValueError(
                    f"sparsity={self.sparsity} would prune layer(s) {zero} to zero width; "
                    "lower the sparsity or set min_channels >= 1."
                )

    # ------------------------------------------------------------------ the edit
    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_start and not self.events:
            check_epoch_in_run(trainer, trainer.current_epoch, "DiscEditPruning(prune_epoch='start') fine-tuning")
            self.prune(trainer, pl_module, self.sparsity, in_loop=False)

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if is_last_train_batch(trainer):
            self._prune_if_due(trainer, pl_module)

    def _prune_if_due(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch in self._due and not any(e["epoch"] == epoch for e in self.events):
            self.prune(trainer, pl_module, self._due[epoch])

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        self._prune_if_due(trainer, pl_module)  # only if no last batch was seen (e.g. an iterable of unknown length)
        params = sum(p.numel() for p in pl_module.parameters())
        acc = trainer.callback_metrics.get("val_acc")
        self.curve.append({"epoch": epoch, "params": params, "val_acc": float(acc) if acc is not None else math.nan})

    def prune(self, trainer: L.Trainer, pl_module: L.LightningModule, sparsity: float, in_loop: bool = True) -> dict[str, Any]:
        """Score, select and remove channels so that the model reaches ``sparsity``; returns the event record.

        Raises:
            ValueError: before the model changes, for calibration data with fewer than two classes or
                non-finite statistics or scores.
        """
        device = pl_module.device
        example = torch.zeros(self.input_shape, device=device, dtype=next(pl_module.parameters()).dtype)
        if self.dense_macs_params is None:
            self.dense_macs_params = count_macs_params(pl_module, example)
        val_loader = stage_loader(trainer, "val") if self.evaluate else None
        if self.classes is not None:
            keep_classes(pl_module, self.classes)
            self.num_classes = len(self.classes)
        acc_before = self._accuracy(pl_module, val_loader)

        layers = prunable_layers(pl_module, self.layer_patterns)
        calibration = None  # 'auto' scores, prunes and recalibrates the chosen criterion on the batches it selected on
        if self.importance == "auto":
            calibration = list(device_batches(stage_loader(trainer, self.calibration_source), self.get_inputs_targets,
                                              device, self.calibration_batches))
            if self.chosen is None:
                self.chosen = self._select(trainer, pl_module, example, sparsity, list(layers), calibration, in_loop)
        importance, site, scope = self._criterion()
        batches = calibration
        if batches is None and (importance == "discedit" or importance in NEEDS_GRADIENTS):
            loader = stage_loader(trainer, self.calibration_source)
            batches = device_batches(loader, self.get_inputs_targets, device, self.calibration_batches)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scores = channel_scores(
                pl_module, layers, importance, batches, self.num_classes, self.witness_name,
                reduce_sum=lambda t: trainer.strategy.reduce(t, reduce_op="sum"),
                generator=torch.Generator().manual_seed(self.seed + len(self.events)),
                site=site, example_input=example, normalize=scope == "global",
                redundancy=self.redundancy,
            )
        for w in caught:
            rank_zero_warn(f"DiscEditPruning: {w.message}")
        result = prune_channels(
            pl_module, example, scores, sparsity, layers, self.sparsity_type, scope, self.min_channels,
            self.original_widths, self.dense_macs_params[1], dense_macs=self.dense_macs_params[0],
        )
        self._rewire_training(trainer, pl_module)
        acc_pruned = recalibrated = None
        if self.recalibrate_bn and result.removed:
            acc_pruned = self._accuracy(pl_module, val_loader)
            recalibrated = self._recalibrate(trainer, pl_module, calibration)
        if result.removed:
            forget_checkpoint_scores_before_edit(trainer, "DiscEditPruning")

        macs, params = count_macs_params(pl_module, example)
        removed = result.removed
        event = {
            "epoch": trainer.current_epoch,
            "at_start": not in_loop,
            "target_sparsity": sparsity,
            "sparsity": result.sparsity,
            "removed": removed,
            "params": params,
            "macs": macs,
            "acc_before": acc_before,
            "acc_after_prune": acc_pruned,
            "bn_recalibrated": recalibrated,
            "acc_after": self._accuracy(pl_module, val_loader),
        }
        self.events.append(event)
        metrics = {f"discedit/{k}": float(event[k]) for k in ("sparsity", "params", "macs")}
        metrics["discedit/macs_ratio"] = macs / self.dense_macs_params[0]
        if event["acc_before"] is not None:
            metrics.update({"discedit/acc_before": event["acc_before"], "discedit/acc_after": event["acc_after"]})
        log_metrics(trainer, pl_module, metrics, in_loop)
        rank_zero_info(
            f"DISCEDIT-SP {'before' if not in_loop else 'end of'} epoch {event['epoch']}: removed {removed} channels (sparsity {event['sparsity']:.1%}), "
            f"params {params:,}, MACs {macs:,} ({macs / self.dense_macs_params[0]:.3f} of dense)"
            + (f", val acc {acc_before:.4f} -> {event['acc_after']:.4f}" if acc_before is not None else "")
            + (f" (BatchNorm recalibrated; {acc_pruned:.4f} before)" if recalibrated and acc_pruned is not None else "")
        )
        return event

    def _criterion(self) -> tuple[str, str, str]:
        """``(importance, feature site, scope)`` of this prune: the arguments, or the candidate 'auto' chose."""
        if self.importance != "auto":
            return self.importance, self.feature_site, self.scope
        spec = CANDIDATES[self.chosen]
        return spec["importance"], spec.get("site", "conv"), spec["scope"]

    def _select(self, trainer: L.Trainer, pl_module: L.LightningModule, example: Tensor, sparsity: float,
                layer_names: list[str], calibration: list, in_loop: bool) -> str:
        """Prune a copy with every candidate, recalibrate, measure on the selection loader; the best one's name.

        Accuracies are summed across DDP ranks, so every rank makes the same choice."""
        device = pl_module.device
        reduce_sum = lambda t: trainer.strategy.reduce(t, reduce_op="sum")  # noqa: E731
        selection = list(device_batches(stage_loader(trainer, self.selection_source), self.get_inputs_targets,
                                        device, self.selection_batches))
        attached, pl_module._trainer = pl_module._trainer, None  # copy the module, not the Trainer it points to
        try:
            for name in self.candidates:
                start = time.perf_counter()
                candidate = copy.deepcopy(pl_module)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    prune_with(candidate, name, example, calibration, sparsity, layer_names, self.num_classes,
                               self.sparsity_type, self.min_channels, reduce_sum=reduce_sum,
                               original_widths=dict(self.original_widths), dense_params=self.dense_macs_params[1],
                               dense_macs=self.dense_macs_params[0], recalibrate=self.recalibrate_bn)
                acc = selection_accuracy(candidate, selection, reduce_sum)
                self.selection[name] = {"selection_acc": acc, "seconds": time.perf_counter() - start}
                del candidate
        finally:
            pl_module._trainer = attached
        chosen = max(self.candidates, key=lambda n: self.selection[n]["selection_acc"])  # ties: the earlier one
        log_metrics(trainer, pl_module, {f"discedit/auto/{n}": v["selection_acc"] for n, v in self.selection.items()},
                    in_loop)
        self._print_selection(chosen)
        return chosen

    @rank_zero_only
    def _print_selection(self, chosen: str) -> None:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"DISCEDIT-SP importance='auto': {chosen} chosen on the {self.selection_source} loader")
        for col in ("candidate", "selection acc", "seconds"):
            table.add_column(col, justify="left" if col == "candidate" else "right")
        for name, row in self.selection.items():
            mark = " *" if name == chosen else ""
            table.add_row(name + mark, f"{row['selection_acc']:.4f}", f"{row['seconds']:.2f}")
        Console().print(table)

    def _recalibrate(self, trainer: L.Trainer, pl_module: L.LightningModule, batches: list | None = None) -> int:
        """Re-estimate BatchNorm statistics on ``batches`` (default the calibration loader); returns the number of
        BatchNorm layers."""
        if batches is None:
            loader = stage_loader(trainer, self.calibration_source)
            batches = device_batches(loader, self.get_inputs_targets, pl_module.device, self.recalibration_batches)
        count = recalibrate_batchnorm(pl_module, batches, reduce_mean=lambda t: trainer.strategy.reduce(t, reduce_op="mean"))
        if count == 0 and not self._said_no_bn:
            rank_zero_info("DiscEditPruning: the model has no BatchNorm layer; recalibrate_bn has nothing to do.")
            self._said_no_bn = True
        return count

    def _rewire_training(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Point DDP and the optimizers at the new parameter tensors."""
        strategy = trainer.strategy
        if isinstance(strategy.model, DistributedDataParallel):
            strategy.model = pl_module
            strategy.configure_ddp()
        if trainer.training:
            # Optimizer state (momenta) is per-tensor and cannot survive new shapes; scheduler progress can.
            schedules = [cfg.scheduler.state_dict() for cfg in strategy.lr_scheduler_configs]
            strategy.setup_optimizers(trainer)
            if len(schedules) == len(strategy.lr_scheduler_configs):
                for cfg, state in zip(strategy.lr_scheduler_configs, schedules):
                    cfg.scheduler.load_state_dict(state)
                    for group, lr in zip(cfg.scheduler.optimizer.param_groups, cfg.scheduler.get_last_lr()):
                        group["lr"] = lr

    def _accuracy(self, pl_module: L.LightningModule, loader: Any) -> float | None:
        if loader is None:
            return None
        acc = evaluate_accuracy(pl_module, loader, self.get_inputs_targets, self.num_classes, pl_module.device)
        return float(acc)

    # ------------------------------------------------------------------ checkpoints
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "events": self.events, "curve": self.curve, "original_widths": self.original_widths,
            "layer_widths": self.layer_widths, "dense_macs_params": self.dense_macs_params,
            "chosen": self.chosen, "selection": self.selection,
            "attention_shapes": {n: list(v) for n, v in self.attention_shapes.items()},
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.events = list(state_dict.get("events", []))
        self.curve = list(state_dict.get("curve", []))
        self.original_widths = dict(state_dict.get("original_widths", {}))
        self.layer_widths = dict(state_dict.get("layer_widths", {})) or self.layer_widths
        self.chosen = state_dict.get("chosen", self.chosen)
        self.selection = dict(state_dict.get("selection", {}))
        self.attention_shapes = {n: tuple(v) for n, v in state_dict.get("attention_shapes", {}).items()}
        dmp = state_dict.get("dense_macs_params")
        self.dense_macs_params = tuple(dmp) if dmp is not None else None

    # ------------------------------------------------------------------ report
    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_start:
            check_start_edit_ran(trainer, bool(self.events), "DiscEditPruning(prune_epoch='start')")
        if self.events:
            self._report(trainer, pl_module)

    @rank_zero_only
    def _report(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from rich.console import Console
        from rich.table import Table

        modules = dict(pl_module.named_modules())
        table = Table(title="DISCEDIT-SP: channels per layer")
        for col in ("layer", "before", "after", "kept"):
            table.add_column(col, justify="left" if col == "layer" else "right")
        for name, before in self.layer_widths.items():
            after = component_count(modules[name]) if name in modules else 0
            label = f"{name} (heads)" if name in modules and is_head_attention(modules[name]) else name
            table.add_row(label, str(before), str(after), f"{after / before:.0%}")
        summary = Table(title="DISCEDIT-SP: model before / after")
        for col in ("", "before", "after", "ratio"):
            summary.add_column(col, justify="right")
        dense_macs, dense_params = self.dense_macs_params
        last = self.events[-1]
        summary.add_row("params", f"{dense_params:,}", f"{last['params']:,}", f"{last['params'] / dense_params:.3f}")
        summary.add_row("MACs", f"{dense_macs:,}", f"{last['macs']:,}", f"{last['macs'] / dense_macs:.3f}")
        first = self.events[0]
        if first["acc_before"] is not None:
            summary.add_row("val acc (at prune)", f"{first['acc_before']:.4f}", f"{last['acc_after']:.4f}", "")
        final_acc = trainer.callback_metrics.get("val_acc")
        if final_acc is not None:
            summary.add_row("val acc (end of fit)", "", f"{float(final_acc):.4f}", "")
        console = Console()
        console.print(table)
        if self.attention_shapes:
            heads = Table(title="DISCEDIT-SP: attention heads × head width")
            for col in ("attention", "before", "after"):
                heads.add_column(col, justify="left" if col == "attention" else "right")
            now = attention_shapes(pl_module)
            for name, (h, d) in self.attention_shapes.items():
                h_after, d_after = now.get(name, (0, 0))
                heads.add_row(name, f"{h} × {d}", f"{h_after} × {d_after}")
            console.print(heads)
        console.print(summary)
        if self.plot:
            self._plot(trainer)

    def _plot(self, trainer: L.Trainer) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [c["epoch"] for c in self.curve]
        fig, ax1 = plt.subplots(figsize=(6, 3.5))
        ax1.plot(epochs, [c["val_acc"] for c in self.curve], "o-", color="tab:blue", label="val accuracy")
        ax1.set_xlabel("epoch")
        ax1.set_ylabel("validation accuracy", color="tab:blue")
        ax2 = ax1.twinx()
        ax2.plot(epochs, [c["params"] for c in self.curve], "s--", color="tab:red", label="parameters")
        ax2.set_ylabel("parameters", color="tab:red")
        for i, e in enumerate(self.events):
            ax1.axvline(e["epoch"], color="grey", alpha=0.3)
            if e["acc_after"] is not None:
                ax1.plot(e["epoch"], e["acc_after"], "x", color="tab:blue", ms=9, label="right after prune" if i == 0 else None)
        ax1.legend(loc="lower left", fontsize=8)
        ax1.set_title(f"DISCEDIT-SP ({self.witness_name}, sparsity {self.sparsity:.0%})")
        fig.tight_layout()
        path = output_dir(trainer) / "discedit_pruning.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        rank_zero_info(f"DISCEDIT-SP plot saved to {path}")
