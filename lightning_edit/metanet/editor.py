"""``MetanetworkEditor``: train a graph metanetwork to edit networks in one forward pass
(Kalogeropoulos, Bouritsas & Panagakis 2025; METHODS.md Sec. 3), under a :mod:`~lightning_edit.metanet.requirements`
requirement (weight pruning, data minimisation, bias mitigation); :func:`compose` chains trained editors."""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch_geometric.data import Batch

from lightning_edit.metanet.graph import architecture, to_graph, to_parameters
from lightning_edit.metanet.model import GraphMetanetwork, MetanetOutput
from lightning_edit.metanet.requirements import DataMinimisation, NetworkEdit, Requirement, WeightPruning, make_requirement


def jensen_shannon(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """Mean Jensen-Shannon divergence (nats) between the softmax distributions of ``(B, K)`` logits."""
    p, q = p_logits.softmax(-1), q_logits.softmax(-1)
    m = 0.5 * (p + q)
    kl = lambda a, b: (a * (a.clamp_min(1e-12).log() - b.clamp_min(1e-12).log())).sum(-1)  # noqa: E731
    return (0.5 * kl(p, m) + 0.5 * kl(q, m)).mean()


def graph_sizes(graph: Batch) -> tuple[list[int], list[int]]:
    """Edges and nodes of each network of a batch, from its layer specs (host-side: no device sync)."""
    edges = [sum(s.in_dim * s.out_dim for s in specs) for specs in graph.specs]
    nodes = [specs[0].in_dim + sum(s.out_dim for s in specs) for specs in graph.specs]
    return edges, nodes


def _group_by_edges(graphs: list, budget: int | None) -> list[list[int]]:
    """Consecutive indices of ``graphs`` in groups of at most ``budget`` edges (one group when ``None``)."""
    if budget is None:
        return [list(range(len(graphs)))]
    groups, current, edges = [], [], 0
    for i, g in enumerate(graphs):
        n = g.edge_index.shape[1]
        if current and edges + n > budget:
            groups.append(current)
            current, edges = [], 0
        current.append(i)
        edges += n
    return groups + [current] if current else groups


class MetanetworkEditor(L.LightningModule):
    """Trains a :class:`GraphMetanetwork` over a population of networks (:class:`ModelZooDataModule`).

    Loss per network: ``w · requirement(θ') + λ · JSD(f_θ, f_θ')`` on a batch of data, with
    ``θ' = (θ + Δθ) · gates`` evaluated functionally so that gradients reach the metanetwork.
    Logged: ``train/requirement``, ``train/jsd``; at validation/test, every network of the split is edited
    exactly and evaluated on the whole val/test data: ``{stage}/accuracy``, ``{stage}/accuracy_original`` and
    the requirement's measurements (``{stage}/level``, e.g. ``val/sparsity``, ``val/eo_difference``).

    Args:
        requirement: a name in :data:`~lightning_edit.metanet.requirements.REQUIREMENTS` or a Requirement.
        requirement_args: its arguments, e.g. ``{"sparsity": 0.6}`` or ``{"k": 5}``.
        lam: weight λ of the function-preservation term.
        task_weight: weight ``μ`` of an added term ``μ · CE(f_θ', y)``, the edited network's cross-entropy on the
            data batch's labels (default 0: the paper's objective). Our addition: the JSD counts every changed
            decision against the edit, while a fairness edit has to change some, and the labels say which ones
            cost accuracy. It is the signal the fine-tuning baselines train on.
        hidden, num_layers, num_positions, max_layers: see :class:`GraphMetanetwork`.
        lr: Adam learning rate.
        requirement_weight: weight ``w`` of the requirement term; with ``constraint="lagrangian"``, the
            multiplier's initial value.
        gate_conditioned: the weight changes see the requirement's mask (:class:`GraphMetanetwork`).
        constraint: ``"penalty"`` (fixed weight ``w``) or ``"lagrangian"``, for requirements with a ``target``
            (bias mitigation): the loss is ``λ_c · (gap - target) + λ · JSD`` with a multiplier ``λ_c ≥ 0``
            updated by dual ascent after every step, ``λ_c ← max(0, λ_c + multiplier_lr · (gap - target))``
            (the batch's surrogate gap). It rises while the editor misses the target and falls once it meets
            it, so the editor is pushed exactly as hard as the target needs, where a fixed weight either leaves
            the gap or collapses the network to a constant classifier. Logged as ``train/multiplier``. The batch's
            gap is a max of noisy group rates, biased upwards when the smaller group has few positives, and the
            editor then over-corrects: on Adult, target 0.04 gave EO 0.065 at -1.5 accuracy points with 1,024 data
            rows per step and EO 0.055 at -0.2 with 8,192 (README). Use thousands of rows per step.
            ``"proxy_lagrangian"`` (Cotter, Jiang & Sridharan, ALT 2019, "Two-player games for efficient
            non-convex constrained optimization", §4): the editor still descends the surrogate, but the multiplier
            ascends on the *exact* gap of the batch's ``argmax`` decisions (:meth:`BiasMitigation.exact_violation`),
            the quantity the target is stated in. The soft gap is only loosely tied to the exact one (on Adult MLPs
            0.10 soft for 0.06 exact, 0.17 for 0.28), so a multiplier driven by it stops at the wrong place. The
            exact gap of a small batch is biased upwards (a max of noisy rate differences): use thousands of rows
            per step. Logged as ``train/requirement_exact``.
        multiplier_lr: the dual step size.
        kernel_size: the largest conv kernel the editor reads (1 for MLPs; 3 for :func:`make_cnn` populations):
            edge features are ``kernel_size²`` values, smaller kernels and linear weights zero-padded.
        gate_bias, gate_prior, gate_granularity: initial gate logit, the magnitude prior of the edge gates, and
            one gate per edge or per kernel weight (:class:`GraphMetanetwork`; ``"weight"`` is for weight pruning).
            ``None`` (default): for weight pruning ``"magnitude"`` and ``"weight"`` (unstructured pruning, also of
            CNNs), otherwise ``"none"`` and ``"edge"``. On the digits CNN population at 60% sparsity the editor
            went from 17.5% (no prior, kernel gates) to 53.6% (prior, kernel gates) and 81.4% (prior, weight
            gates), against 65.2% for magnitude pruning (README). Checkpoints saved before these options reload
            with ``"none"`` and ``"edge"``, the editor they were trained as. For data minimisation
            ``gate_prior="magnitude"`` starts the attribute gates from the norm rule (:class:`GraphMetanetwork`); it
            is not the default there: on Adult it won at k = 8 and 4 (+0.4, +1.8 points on test networks) and lost
            4.4 points at k = 2, where the editor without it finds a better pair of attributes than the norms (README).
        gate_prior_scale: the prior's initial weight ``α`` (learned; :class:`GraphMetanetwork` ``prior_scale``).

    Raises:
        ValueError: an unknown requirement name or bad requirement arguments, a negative λ or ``task_weight``, an unknown
            ``constraint``, a (proxy-)Lagrangian for a requirement without a target, a non-positive
            ``multiplier_lr``, a ``multiplier_lr`` other than the default with ``constraint="penalty"`` (it has no
            multiplier), a ``kernel_size`` below 1, an unknown ``gate_prior`` or ``gate_granularity``, a
            ``gate_prior_scale`` <= 0 or other than the default without the prior,
            ``gate_granularity="weight"`` for a requirement other than weight pruning (at construction); a requirement the data cannot meet,
            e.g. ``k`` above the number of inputs or no sensitive attribute, or a population whose kernels differ
            from ``kernel_size`` (at ``setup``).
    """

    def __init__(self, requirement: str = "weight_pruning", requirement_args: dict[str, Any] | None = None, lam: float = 1.0,
                 hidden: int = 64, num_layers: int = 3, num_positions: int = 256, max_layers: int = 8, lr: float = 1e-3,
                 requirement_weight: float = 10.0, gate_conditioned: bool = True, constraint: str = "penalty",
                 multiplier_lr: float = 0.5, kernel_size: int = 1, gate_bias: float = 4.0, gate_prior: str | None = None,
                 gate_granularity: str | None = None, gate_prior_scale: float = 1.0, task_weight: float = 0.0) -> None:
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}.")
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}.")
        if task_weight < 0:
            raise ValueError(f"task_weight must be >= 0, got {task_weight}.")
        self.requirement: Requirement = make_requirement(requirement, requirement_args)
        if constraint not in ("penalty", "lagrangian", "proxy_lagrangian"):
            raise ValueError(f"constraint must be 'penalty', 'lagrangian' or 'proxy_lagrangian', got {constraint!r}.")
        if constraint != "penalty" and not hasattr(self.requirement, "violation"):
            raise ValueError(f"constraint={constraint!r} needs a requirement with a target (bias_mitigation); "
                             f"{self.requirement.name!r} is held exactly by its gates: use constraint='penalty'.")
        prunes = isinstance(self.requirement, WeightPruning)
        gate_prior = gate_prior or ("magnitude" if prunes else "none")
        gate_granularity = gate_granularity or ("weight" if prunes else "edge")
        if gate_granularity == "weight" and not prunes:
            raise ValueError(f"gate_granularity='weight' gates single kernel weights, which only weight_pruning uses; "
                             f"{self.requirement.name!r} gates edges or inputs: use gate_granularity='edge'.")
        if multiplier_lr <= 0:
            raise ValueError(f"multiplier_lr must be > 0, got {multiplier_lr}.")
        if constraint == "penalty" and multiplier_lr != 0.5:
            raise ValueError(f"multiplier_lr={multiplier_lr} steps the Lagrange multiplier, which constraint='penalty' does "
                             f"not have: use constraint='lagrangian' (or 'proxy_lagrangian'), or drop multiplier_lr.")
        if gate_prior == "none" and gate_prior_scale != 1.0:
            raise ValueError(f"gate_prior_scale={gate_prior_scale} weights the magnitude prior, which gate_prior='none' "
                             f"does not use: set gate_prior='magnitude', or drop gate_prior_scale.")
        self.save_hyperparameters({"requirement": self.requirement.name, "requirement_args": self.requirement.arguments(),
                                   "lam": lam, "hidden": hidden, "num_layers": num_layers, "num_positions": num_positions,
                                   "max_layers": max_layers, "lr": lr, "requirement_weight": requirement_weight,
                                   "gate_conditioned": gate_conditioned, "constraint": constraint,
                                   "multiplier_lr": multiplier_lr, "kernel_size": kernel_size, "gate_bias": gate_bias,
                                   "gate_prior": gate_prior, "gate_granularity": gate_granularity,
                                   "gate_prior_scale": gate_prior_scale, "task_weight": task_weight})
        self.metanet = self._build_metanet()
        self._pool_units()
        self.register_buffer("multiplier", torch.tensor(float(requirement_weight)))
        self.num_inputs: int | None = None
        self._eval_data: dict[str, tuple[Tensor, ...]] = {}

    def _build_metanet(self) -> GraphMetanetwork:
        hp = self.hparams
        return GraphMetanetwork(hp.kernel_size**2, hp.num_positions, hp.max_layers, hp.hidden, hp.num_layers,
                                gate_bias=hp.gate_bias, gate_conditioned=hp.gate_conditioned, gate_prior=hp.gate_prior,
                                gate_granularity=hp.gate_granularity, prior_scale=hp.get("gate_prior_scale", 1.0))

    def _pool_units(self) -> None:
        if isinstance(self.requirement, DataMinimisation):  # log-sum-exp pools the prior's log ‖column‖² exactly
            self.requirement.unit_pool = "logsumexp" if self.hparams.gate_prior == "magnitude" else "mean"

    def setup(self, stage: str) -> None:
        population_kernel = getattr(self.trainer.datamodule, "max_kernel", self.hparams.kernel_size)
        if population_kernel != self.hparams.kernel_size:
            raise ValueError(f"The population's neural graphs have {population_kernel}x{population_kernel} kernels; "
                             f"build the editor with kernel_size={population_kernel}.")
        data = getattr(self.trainer.datamodule, "data", None)  # set up by the datamodule's own setup
        self.requirement.setup(data, getattr(data, "num_features", None))
        self._eval_data = {}

    # ------------------------------------------------------------------ core
    def split_output(self, graph: Batch, out: MetanetOutput) -> list[NetworkEdit]:
        """Per network of the batch, its specs and gate logits."""
        edge_counts, node_counts = graph_sizes(graph)
        return [NetworkEdit(specs, e, n) for specs, e, n in
                zip(graph.specs, out.edge_gate.split(edge_counts), out.node_gate.split(node_counts))]

    def edge_mask_fn(self, graph: Batch, hard: bool):
        """The function the metanetwork calls on its gate logits: per network of ``graph``, the requirement's
        edge mask (training gates, or exact gates when ``hard``), concatenated ``(E,)``; ``None`` without gating."""
        edge_counts, node_counts = graph_sizes(graph)

        def fn(edge_logits: Tensor, node_logits: Tensor) -> Tensor | None:
            masks = [self.requirement.edge_mask(NetworkEdit(specs, e, n), hard) for specs, e, n in
                     zip(graph.specs, edge_logits.split(edge_counts), node_logits.split(node_counts))]
            return None if masks[0] is None else torch.cat(masks)

        return fn

    def forward(self, graph: Batch, hard: bool = False) -> MetanetOutput:
        """The metanetwork's output on ``graph``, with the requirement's gates (exact when ``hard``)."""
        return self.metanet(graph, self.edge_mask_fn(graph, hard))

    def edited_parameters(self, graph: Batch, out: MetanetOutput, templates: list[nn.Module]) -> list[dict[str, Tensor]]:
        """Per network, the edited parameters ``(θ + Δθ) · mask`` (the mask in ``out``, if any)."""
        params = []
        edge_counts, node_counts = graph_sizes(graph)
        masks = out.edge_mask.split(edge_counts) if out.edge_mask is not None else [None] * len(edge_counts)
        edges = zip(graph.edge_attr.split(edge_counts), out.delta_edge.split(edge_counts), masks)
        nodes = zip(graph.bias.split(node_counts), out.delta_node.split(node_counts))
        for template, specs, (w, dw, gate), (b, db) in zip(templates, graph.specs, edges, nodes):
            w = w + dw if gate is None else (w + dw) * gate.reshape(len(gate), -1)
            params.append(to_parameters(specs, w, b + db, template))
        return params

    def _templates(self, graph: Batch) -> list[nn.Module]:
        return [self.trainer.datamodule.models[int(i)] for i in graph.net_id]

    def _check_inputs(self, graph: Batch) -> None:
        widths = {specs[0].in_dim for specs in graph.specs}
        if self.num_inputs is None:
            self.num_inputs = widths.pop() if len(widths) == 1 else None
        if self.num_inputs is not None and widths - {self.num_inputs}:
            raise ValueError(f"Network input width {widths} differs from the editor's {self.num_inputs}.")

    @staticmethod
    def _unpack(data: Any) -> tuple[Tensor, Tensor, Tensor | None]:
        x, y, *rest = data
        return x, y, (rest[0] if rest else None)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        graph = batch["nets"]
        x, y, s = self._unpack(batch["data"])
        self._check_inputs(graph)
        out = self(graph, hard=False)
        templates = self._templates(graph)
        params = self.edited_parameters(graph, out, templates)
        lagrangian, proxy = self.hparams.constraint != "penalty", self.hparams.constraint == "proxy_lagrangian"
        term = self.requirement.violation if lagrangian else self.requirement.loss
        task_weight = self.hparams.task_weight
        reqs, jsds, exacts, ces = [], [], [], []
        for t, p, net in zip(templates, params, self.split_output(graph, out)):
            logits = functional_call(t, p, (x,))
            reqs.append(term(net, logits, y, s))
            jsds.append(jensen_shannon(t(x).detach(), logits))
            if proxy:
                exacts.append(self.requirement.exact_violation(logits, y, s))
            if task_weight > 0:
                ces.append(F.cross_entropy(logits, y))
        req, jsd = torch.stack(reqs).mean(), torch.stack(jsds).mean()
        weight = self.multiplier.clone() if lagrangian else self.hparams.requirement_weight
        loss = weight * req + self.hparams.lam * jsd
        if task_weight > 0:
            task = torch.stack(ces).mean()
            loss = loss + task_weight * task
            self.log("train/task_loss", task, batch_size=len(templates))
        if lagrangian:  # dual ascent; on-device, no host sync
            signal = torch.stack(exacts).mean() if proxy else req.detach()
            with torch.no_grad():
                self.multiplier.add_(self.hparams.multiplier_lr * self.all_gather(signal).mean()).clamp_(min=0.0)
            self.log("train/multiplier", self.multiplier, batch_size=len(templates))
            if proxy:
                self.log("train/requirement_exact", signal, batch_size=len(templates))
        self.log_dict({"train/requirement": req, "train/jsd": jsd, "train/loss": loss}, prog_bar=True, batch_size=len(templates))
        return loss

    def _eval_tensors(self, stage: str, batch_data: Any) -> tuple[Tensor, Tensor, Tensor | None]:
        dm = self.trainer.datamodule
        if not hasattr(dm, "eval_tensors"):
            return self._unpack(batch_data)
        if stage not in self._eval_data:
            self._eval_data[stage] = tuple(t.to(self.device) for t in dm.eval_tensors(stage))
        return self._unpack(self._eval_data[stage])

    def _evaluate(self, batch: dict[str, Any], stage: str) -> None:
        graph = batch["nets"]
        x, y, s = self._eval_tensors(stage, batch["data"])
        templates = self._templates(graph)
        params = self.edited_parameters(graph, self(graph, hard=True), templates)
        rows = []
        for t, p in zip(templates, params):
            forward = lambda inp, t=t, p=p: functional_call(t, p, (inp,))  # noqa: E731
            row = self.requirement.measure(forward, p, architecture(t), x, y, s)
            row["accuracy"] = (forward(x).argmax(-1) == y).float().mean()
            row["accuracy_original"] = (t(x).argmax(-1) == y).float().mean()
            rows.append(row)
        self.log_dict({f"{stage}/{k}": torch.stack([r[k] for r in rows]).mean() for k in rows[0]},
                      prog_bar=stage == "val", batch_size=len(templates))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.metanet.parameters(), lr=self.hparams.lr)

    # ------------------------------------------------------------------ one-pass editing
    @torch.no_grad()
    def edit(self, model: nn.Module | list[nn.Module], edges_per_pass: int | None = 65536) -> nn.Module | list[nn.Module]:
        """An edited copy of ``model`` (any network the converter supports, seen in training or not), with the
        requirement enforced exactly. A list of networks is edited batched, and a list is returned.

        The networks' neural graphs are joined into one disjoint graph and edited by one forward pass of the
        metanetwork per ``edges_per_pass`` edges (consecutive networks are grouped; a network larger than the
        budget gets a pass of its own). ``None`` edits the whole list in one pass. The budget exists because
        every message-passing tensor is ``(E, hidden)``: above about 32 MB each one is a fresh ``mmap`` whose
        page faults made a single 64-network pass 2× slower per network than passes of 8 (measured on
        2 CPU cores; ``benchmarks/metanet_requirements.py``). The edit is the same either way: graphs do not
        interact.

        Raises:
            ValueError: unsupported layers (named), NaN/inf parameters, an input width other than the editor's,
                a non-positive ``edges_per_pass``.
            RuntimeError: a data-dependent requirement (data minimisation by attribute) that was never set up.
        """
        if edges_per_pass is not None and edges_per_pass < 1:
            raise ValueError(f"edges_per_pass must be a positive number of edges or None, got {edges_per_pass}.")
        models = model if isinstance(model, list) else [model]
        graphs = [to_graph(m, self.hparams.kernel_size) for m in models]
        widths = {g.num_inputs for g in graphs}
        if self.num_inputs is not None and widths != {self.num_inputs}:
            raise ValueError(f"The network has {sorted(widths)} inputs; this editor was trained on {self.num_inputs}.")
        was_training = self.metanet.training
        if was_training:
            self.metanet.eval()
        all_params: list[dict[str, Tensor]] = []
        for group in _group_by_edges(graphs, edges_per_pass):
            graph = Batch.from_data_list([graphs[i] for i in group])
            if graph.edge_attr.device != self.device:
                graph = graph.to(self.device)
            all_params += self.edited_parameters(graph, self(graph, hard=True), [models[i] for i in group])
        if was_training:
            self.metanet.train()
        edited = []
        for m, params in zip(models, all_params):
            e = copy.deepcopy(m)
            for name, value in params.items():
                e.get_parameter(name).copy_(value)
            edited.append(e)
        return edited if isinstance(model, list) else edited[0]

    def measure(self, model: nn.Module, x: Tensor, y: Tensor, s: Tensor | None = None) -> dict[str, float]:
        """The requirement's exact measurements and the accuracy of ``model`` on ``(x, y, s)``."""
        return measure(self.requirement, model, x, y, s)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["num_inputs"] = self.num_inputs
        checkpoint["requirement_state"] = self.requirement.state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved_args = checkpoint.get("hyper_parameters", {}).get("requirement_args", {})
        if isinstance(self.requirement, WeightPruning) and "min_layer_density" not in saved_args:
            self.requirement.min_layer_density = 0.0  # saved before the per-layer floor: it edited by global top-k
        saved = checkpoint.get("hyper_parameters", {})
        legacy = {k: v for k, v in (("gate_prior", "none"), ("gate_granularity", "edge")) if k not in saved}
        if any(self.hparams[k] != v for k, v in legacy.items()):  # saved before these options: rebuild as trained
            self.hparams.update(legacy)
            self.metanet = self._build_metanet().to(self.device)
            self._pool_units()
        self.num_inputs = checkpoint.get("num_inputs")
        self.requirement.load_state(checkpoint.get("requirement_state", {}))


@torch.no_grad()
def measure(requirement: Requirement, model: nn.Module, x: Tensor, y: Tensor, s: Tensor | None = None) -> dict[str, float]:
    """``requirement``'s exact measurements (see its ``measure``) and ``accuracy`` of ``model`` on ``(x, y, s)``."""
    params = dict(model.named_parameters())
    row = requirement.measure(model, params, architecture(model), x, y, s)
    row["accuracy"] = (model(x).argmax(-1) == y).float().mean()
    return {k: float(v) for k, v in row.items()}


@torch.no_grad()
def compose(model: nn.Module, editors: list[MetanetworkEditor], keep_zeros: bool = True) -> nn.Module:
    """Apply trained editors in sequence: ``editors[-1](... editors[0](model))``, one forward pass each.

    With ``keep_zeros`` every weight that an earlier edit set exactly to zero (pruned weights, the outgoing
    weights of dropped inputs) is held at zero by the later edits, so hard requirements survive later
    edits. Without it a later editor's residual changes can revive them.
    Soft requirements (bias mitigation) are not protected: a later edit may change them (see the README).
    """
    out = model
    for editor in editors:
        edited = editor.edit(out)
        if keep_zeros:
            for (name, before), after in zip(out.named_parameters(), edited.parameters()):
                if name.endswith("weight"):
                    after.mul_(before.ne(0))
        out = edited
    return out
