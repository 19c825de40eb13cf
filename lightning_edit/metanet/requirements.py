"""Requirements a metanetwork editor enforces (Kalogeropoulos, Bouritsas & Panagakis 2025; METHODS.md Sec. 3):
weight pruning, data minimisation and bias mitigation.

Each :class:`Requirement` has

* a **gate** on the network's weights (``edge_mask``): soft or straight-through in training, exact at edit time;
* a **differentiable training loss** on a batch of data (``loss``);
* an **exact, non-differentiable measurement** for evaluation (``measure``), whose ``level`` entry is the
  requirement level reported in tables and Pareto plots.

Requirements are chosen by name (``"weight_pruning"``, ``"data_minimisation"``, ``"bias_mitigation"``) with
:func:`make_requirement`, e.g. from a LightningCLI YAML file.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor
from torchmetrics.functional.classification import binary_groups_stat_rates

from lightning_edit.metanet.graph import LayerSpec


@dataclass
class NetworkEdit:
    """One network's slice of a metanetwork output: layer specs, edge gate logits ``(E,)``, node gate logits ``(N,)``."""

    specs: list[LayerSpec]
    edge_logits: Tensor
    node_logits: Tensor

    @property
    def num_inputs(self) -> int:
        return self.specs[0].in_dim

    @property
    def input_logits(self) -> Tensor:
        return self.node_logits[: self.num_inputs]


Forward = Callable[[Tensor], Tensor]


class Requirement:
    """Base class. Subclasses set ``name`` (the YAML key) and ``level_name`` (the headline measurement)."""

    name: ClassVar[str] = ""
    level_name: ClassVar[str] = ""

    def setup(self, data: Any | None = None, num_inputs: int | None = None) -> None:
        """Validate against the tabular data (``feature_groups``, ``num_features``, sensitive attribute) before training.

        Raises:
            ValueError: when the requirement cannot be met on this data (subclasses say why).
        """

    def edge_mask(self, net: NetworkEdit, hard: bool) -> Tensor | None:
        """Multiplier ``(E,)`` on the edited weights, or ``None`` for no gating."""
        return None

    def loss(self, net: NetworkEdit, logits: Tensor, y: Tensor, s: Tensor | None) -> Tensor:
        """Differentiable penalty (scalar) of one network; ``logits (B, K)`` of the edited network on the batch."""
        raise NotImplementedError

    def measure(self, forward: Forward, params: dict[str, Tensor], specs: list[LayerSpec], x: Tensor, y: Tensor,
                s: Tensor | None) -> dict[str, Tensor]:
        """Exact measurements (0-dim tensors, no host sync) of a network given as ``forward`` and its ``params``;
        always contains ``"level"``."""
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """What :meth:`setup` learnt from the data (saved in editor checkpoints)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass

    def arguments(self) -> dict[str, Any]:
        """The constructor arguments (for ``save_hyperparameters``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}


def _first_layer_edges(specs: list[LayerSpec], input_mask: Tensor, num_edges: int) -> Tensor:
    """Expand a per-input mask ``(F,)`` to all edges ``(E,)``: first-layer edges follow their input, others are 1."""
    first = input_mask.repeat(specs[0].out_dim)  # first-layer edges are output-major, input-minor
    rest = input_mask.new_ones(num_edges - first.numel())
    return torch.cat([first, rest])


@functools.lru_cache(maxsize=256)
def _real_weights(specs: tuple[LayerSpec, ...], kernel_dim: int) -> Tensor:
    """``(E, kernel_dim)`` bool: which entries of the zero-padded edge features are weights of the network (the
    centred ``k × k`` block of each layer's edges), in :func:`~lightning_edit.metanet.graph.to_graph`'s order."""
    side = math.isqrt(kernel_dim)
    parts = []
    for spec in specs:
        block = torch.zeros(side, side, dtype=torch.bool)
        pad = (side - spec.kernel) // 2
        block[pad : pad + spec.kernel, pad : pad + spec.kernel] = True
        parts.append(block.flatten().expand(spec.in_dim * spec.out_dim, kernel_dim))
    return torch.cat(parts)


def _weights_of(params: dict[str, Tensor], specs: list[LayerSpec]) -> list[Tensor]:
    """The weight tensors of the layers ``specs`` in ``params``, in forward order."""
    return [params[f"{s.name}.weight"] for s in specs]


@dataclass
class WeightPruning(Requirement):
    """At most ``1 - sparsity`` of the weights (edges) survive.

    Edit time: the edges with the lowest logits are zeroed, exactly ``round(sparsity · E)`` of them in an MLP;
    in a CNN, where an edge is a whole k×k kernel, as many as remove ``round(sparsity · W)`` of the ``W`` weights
    (kernel-level pruning, at a weight sparsity within one kernel of the target).
    Training (``gates``):

    * ``"straight_through"`` (default): the forward pass uses that exact mask, the backward pass goes through
      ``sigmoid(logit)`` (Bengio et al. 2013), as data minimisation does. Training sees the network it will
      output, and the mask-aware round of :class:`GraphMetanetwork` can learn to compensate the pruned weights.
    * ``"soft"``: gates ``sigmoid(logit)`` multiply the weights (the paper's relaxation); the exact top-k at
      edit time then differs from what was trained.

    With one gate logit per kernel weight (``(E, K·K)``, ``MetanetworkEditor(gate_granularity="weight")``) the
    mask is unstructured: exactly ``round(sparsity · W)`` single weights, kernel padding excluded.

    Loss (both): ``relu(mean(sigmoid(logit)) - (1 - sparsity))²``, which keeps the soft gates on budget.
    Measure: ``sparsity`` = fraction of zero weights (``level``).

    ``min_layer_density`` (a departure from the paper, which ranks all edges globally): every layer keeps at
    least this fraction of its weights, its highest-logit ones; the rest of the budget is still taken globally.
    A global ranking can empty a layer and leave a constant classifier: an editor trained on 1-2 hidden layers,
    given a 3-hidden-layer network, kept its deeper layers dense and took the whole budget from the first one.
    ``None`` (default) is half the surviving density, ``0.5 · (1 - sparsity)``: on Adult it lifted held-out
    3-layer networks from 74.1 ± 16.4 to 80.2 ± 6.2% at 80% sparsity and test networks from 80.0 to 81.6% at 90%
    (``benchmarks/metanet_requirements.py``, README). ``0`` is the paper's global top-k.

    Raises:
        ValueError: for a sparsity outside [0, 1), an unknown ``gates``, or a ``min_layer_density`` outside
            [0, 1 - sparsity] (the floor would not fit in the budget).
    """

    sparsity: float = 0.5
    gates: str = "straight_through"
    min_layer_density: float | None = None
    name: ClassVar[str] = "weight_pruning"
    level_name: ClassVar[str] = "sparsity"

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}.")
        if self.gates not in ("straight_through", "soft"):
            raise ValueError(f"gates must be 'straight_through' or 'soft', got {self.gates!r}.")
        if self.min_layer_density is None:
            self.min_layer_density = round(0.5 * (1.0 - self.sparsity), 6)
        if not 0.0 <= self.min_layer_density <= 1.0 - self.sparsity:
            raise ValueError(f"min_layer_density must be in [0, 1 - sparsity] = [0, {1 - self.sparsity:g}], got "
                             f"{self.min_layer_density}: each layer's floor must fit in the weights that survive.")

    def soft_gates(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits)

    def hard_gates(self, logits: Tensor, sizes: Tensor | None = None, layer_edges: list[int] | None = None) -> Tensor:
        """Exact mask ``(E,)``: the lowest-logit edges are removed until ``round(sparsity · W)`` weights are,
        where an edge holds ``sizes`` weights (a k×k kernel: k²; 1 for an MLP, where this is the plain
        top-k). ``sizes=None`` counts one weight per edge. ``layer_edges`` (edges per layer, in order) applies
        ``min_layer_density``: the ``ceil(min_layer_density · n)`` highest-logit edges of each layer are removed
        last (only when the rounded-up floors exceed the survivors, by at most one edge per layer, does the
        budget take one of them)."""
        keep = torch.ones_like(logits)
        if self.min_layer_density > 0 and layer_edges:
            ranked = logits.clone()
            for segment in ranked.split(layer_edges):
                floor = math.ceil(self.min_layer_density * len(segment))
                segment[segment.topk(floor).indices] = float("inf")
            logits = ranked
        order = torch.argsort(logits)
        if sizes is None:
            removed = int(round(self.sparsity * len(logits)))
        else:
            budget = int(round(self.sparsity * int(sizes.sum())))
            removed = int(torch.searchsorted(sizes[order].cumsum(0), budget, right=True))
        keep[order[:removed]] = 0.0
        return keep

    @staticmethod
    def edge_sizes(net: NetworkEdit) -> Tensor | None:
        """Weights per edge ``(E,)`` (the layer's kernel size squared), or ``None`` when every edge is one weight."""
        if all(s.kernel == 1 for s in net.specs):
            return None
        return torch.cat([torch.full((s.in_dim * s.out_dim,), s.kernel**2, device=net.edge_logits.device)
                          for s in net.specs])

    @staticmethod
    def _real(net: NetworkEdit) -> Tensor:
        """``(E, K·K)`` bool: the entries of per-weight gate logits that are weights, not kernel padding."""
        return _real_weights(tuple(net.specs), net.edge_logits.shape[1]).to(net.edge_logits.device)

    def edge_mask(self, net: NetworkEdit, hard: bool) -> Tensor:
        if net.edge_logits.dim() == 2:  # one gate per kernel weight: an unstructured mask on the real weights
            real = self._real(net)
            logits, layer_weights = net.edge_logits[real], [s.in_dim * s.out_dim * s.kernel**2 for s in net.specs]
            if not hard and self.gates == "soft":
                keep = self.soft_gates(logits)
            else:
                keep = self.hard_gates(logits.detach(), None, layer_weights)
                if not hard:
                    soft = self.soft_gates(logits)
                    keep = keep + soft - soft.detach()
            return net.edge_logits.new_ones(net.edge_logits.shape).index_put((real,), keep)
        sizes, layer_edges = self.edge_sizes(net), [s.in_dim * s.out_dim for s in net.specs]
        if hard:
            return self.hard_gates(net.edge_logits.detach(), sizes, layer_edges)
        soft = self.soft_gates(net.edge_logits)
        if self.gates == "soft":
            return soft
        return self.hard_gates(net.edge_logits.detach(), sizes, layer_edges) + soft - soft.detach()

    def loss(self, net: NetworkEdit, logits: Tensor, y: Tensor, s: Tensor | None) -> Tensor:
        if net.edge_logits.dim() == 2:
            kept = self.soft_gates(net.edge_logits[self._real(net)]).mean()
        else:
            soft, sizes = self.soft_gates(net.edge_logits), self.edge_sizes(net)
            kept = soft.mean() if sizes is None else (soft * sizes).sum() / sizes.sum()
        return torch.relu(kept - (1.0 - self.sparsity)) ** 2

    def measure(self, forward, params, specs, x, y, s) -> dict[str, Tensor]:
        w = torch.cat([p.flatten() for p in _weights_of(params, specs)])
        sparsity = w.eq(0).float().mean()
        return {"level": sparsity, "sparsity": sparsity}


@dataclass
class DataMinimisation(Requirement):
    """The edited network uses at most ``k`` input units, or never uses the units named in ``drop``.

    A *unit* is one input feature (``unit="feature"``) or one original attribute with all its one-hot
    columns (``unit="attribute"``, from the data's ``feature_groups``). Gates sit on the input neurons
    (node gate logits, averaged over a unit's columns) and multiply all outgoing first-layer weights, so a
    dropped unit has exactly zero influence on every output.

    Training: straight-through gates (forward: the exact top-``k`` mask; backward: through
    ``sigmoid(logit)``) and loss ``relu(Σ sigmoid(logit) - k)² / U`` that keeps the soft gates on budget.
    With ``drop`` the mask is fixed and the metanetwork learns only the repair (loss 0).
    Measure: ``units_used`` (``level``), ``inputs_used`` (features with a nonzero outgoing weight), and
    ``dropped_influence``: the largest output change when every unused input is replaced by the values of
    another row (exactly 0 for a valid edit).

    Args:
        k: number of units to keep. drop: unit names to remove (attribute names, or feature indices for
            ``unit="feature"``). Exactly one of ``k`` and ``drop``.
        unit: ``"attribute"`` or ``"feature"``.

    Raises:
        ValueError: for both or neither of ``k`` and ``drop``, ``k < 1``, an unknown ``unit``; at :meth:`setup`,
            ``k`` larger than the number of units, unknown names in ``drop``, or data without ``feature_groups``.
    """

    k: int | None = None
    drop: list[str] | None = None
    unit: str = "attribute"
    name: ClassVar[str] = "data_minimisation"
    level_name: ClassVar[str] = "units_used"
    unit_names: list[str] = field(default_factory=list, init=False, repr=False, compare=False)
    unit_of_input: Tensor | None = field(default=None, init=False, repr=False, compare=False)
    #: how a unit's logit pools its columns' input-gate logits: ``"mean"``, or ``"logsumexp"`` (set by an editor
    #: with ``gate_prior="magnitude"``, whose input logits carry log squared column norms).
    unit_pool: str = field(default="mean", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.k is None) == (self.drop is None):
            raise ValueError("DataMinimisation needs exactly one of k (units to keep) and drop (unit names to remove).")
        if self.k is not None and self.k < 1:
            raise ValueError(f"k must be >= 1 (a network needs an input), got {self.k}.")
        if self.unit not in ("attribute", "feature"):
            raise ValueError(f"unit must be 'attribute' or 'feature', got {self.unit!r}.")
        if self.drop is not None:
            self.drop = [str(d) for d in self.drop]

    def setup(self, data: Any | None = None, num_inputs: int | None = None) -> None:
        groups = getattr(data, "feature_groups", None) or None
        if num_inputs is None:
            num_inputs = sum(len(v) for v in groups.values()) if groups else None
        if self.unit == "attribute":
            if not groups:
                raise ValueError("unit='attribute' needs a datamodule with feature_groups (e.g. AdultDataModule); "
                                 "use unit='feature' for plain inputs.")
            names = list(groups)
            unit_of_input = torch.empty(sum(len(v) for v in groups.values()), dtype=torch.long)
            for u, cols in enumerate(groups.values()):
                unit_of_input[cols] = u
        else:
            if num_inputs is None:
                raise ValueError("unit='feature' needs the number of inputs: pass num_inputs or a datamodule with num_features.")
            names = [str(i) for i in range(num_inputs)]
            unit_of_input = torch.arange(num_inputs)
        if self.k is not None and self.k > len(names):
            raise ValueError(f"k={self.k} exceeds the {len(names)} input {self.unit}s of the data; choose k <= {len(names)}.")
        unknown = sorted(set(self.drop or []) - set(names))
        if unknown:
            raise ValueError(f"Unknown {self.unit}s in drop: {unknown}; known: {names}.")
        self.unit_names, self.unit_of_input = names, unit_of_input

    def state(self) -> dict[str, Any]:
        return {"unit_names": self.unit_names, "unit_of_input": self.unit_of_input}

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("unit_of_input") is not None:
            self.unit_names, self.unit_of_input = state["unit_names"], state["unit_of_input"].long()

    def _units(self, net: NetworkEdit) -> Tensor:
        if self.unit_of_input is None:
            raise RuntimeError("DataMinimisation is not set up: call requirement.setup(datamodule) or train the editor first.")
        if net.num_inputs != len(self.unit_of_input):
            raise ValueError(f"The network has {net.num_inputs} inputs; the requirement was set up for {len(self.unit_of_input)}.")
        return self.unit_of_input.to(net.node_logits.device)

    def unit_logits(self, net: NetworkEdit) -> Tensor:
        """Gate logit per unit ``(U,)``: the mean of its columns' input logits, or their log-sum-exp
        (``unit_pool="logsumexp"``: with logits ``log ‖column‖²`` this is ``log ‖unit‖²``, the norm rule's ranking)."""
        units = self._units(net)
        sums = torch.zeros(len(self.unit_names), device=units.device, dtype=net.node_logits.dtype)
        if self.unit_pool == "logsumexp":
            top = sums.index_reduce(0, units, net.input_logits.detach(), "amax", include_self=False)
            exp = (net.input_logits - top[units]).exp()
            return sums.index_add(0, units, exp).log() + top
        counts = torch.zeros_like(sums).index_add_(0, units, torch.ones_like(net.input_logits))
        return sums.index_add_(0, units, net.input_logits) / counts.clamp_min(1)

    def keep_units(self, logits: Tensor) -> Tensor:
        """Exact unit mask ``(U,)``: the top-``k`` logits, or all but ``drop``."""
        keep = torch.zeros_like(logits) if self.k is not None else torch.ones_like(logits)
        if self.k is not None:
            keep[torch.argsort(logits, descending=True)[: self.k]] = 1.0
        else:
            keep[[self.unit_names.index(d) for d in self.drop]] = 0.0
        return keep

    def input_mask(self, net: NetworkEdit, hard: bool) -> Tensor:
        logits = self.unit_logits(net)
        keep = self.keep_units(logits.detach())
        if not hard and self.k is not None:
            soft = torch.sigmoid(logits)
            keep = keep + soft - soft.detach()
        return keep[self._units(net)]

    def edge_mask(self, net: NetworkEdit, hard: bool) -> Tensor:
        return _first_layer_edges(net.specs, self.input_mask(net, hard), len(net.edge_logits))

    def loss(self, net: NetworkEdit, logits: Tensor, y: Tensor, s: Tensor | None) -> Tensor:
        if self.k is None:
            return net.node_logits.new_zeros(())
        soft = torch.sigmoid(self.unit_logits(net))
        return torch.relu(soft.sum() - self.k) ** 2 / len(soft)

    def measure(self, forward, params, specs, x, y, s) -> dict[str, Tensor]:
        w = _weights_of(params, specs)[0]
        used = w.reshape(w.shape[0], w.shape[1], -1).ne(0).any(-1).any(0)  # (F,)
        if self.unit_of_input is not None and len(self.unit_of_input) == len(used):
            units, n_units = self.unit_of_input.to(w.device), len(self.unit_names)
        else:
            units, n_units = torch.arange(len(used), device=w.device), len(used)
        unit_used = torch.zeros(n_units, device=w.device).index_add_(0, units, used.float()).gt(0)
        shuffled = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0)).to(x.device)]
        x_changed = torch.where(used, x, shuffled)
        influence = (forward(x_changed) - forward(x)).abs().max()
        return {"level": unit_used.float().sum(), "units_used": unit_used.float().sum(),
                "inputs_used": used.float().sum(), "dropped_influence": influence}


def fairness_differences(probs: Tensor, y: Tensor, s: Tensor, num_groups: int = 2) -> dict[str, Tensor]:
    """Demographic parity difference and equalized odds difference (Hardt et al. 2016; fairlearn's definitions)
    of binary decisions ``probs > 0.5``, from torchmetrics' per-group confusion rates.

    ``dp_difference = max_g P(ŷ=1|s=g) - min_g P(ŷ=1|s=g)``; ``eo_difference = max(TPR gap, FPR gap)``.
    Shapes: ``probs (N,)`` probability of class 1, ``y (N,)`` and ``s (N,)`` int in ``{0,1}`` and ``[0, G)``.
    A group without rows is left out (one group present gives 0); a group without rows of a class makes EO NaN.
    """
    rates = binary_groups_stat_rates(probs, y, s, num_groups, validate_args=False)
    tp, fp, tn, fn = torch.stack(list(rates.values())).unbind(-1)
    selection, tpr, fpr = tp + fp, tp / (tp + fn), fp / (fp + tn)
    gap = lambda r: r.max() - r.min()  # noqa: E731
    return {"dp_difference": gap(selection), "eo_difference": torch.maximum(gap(tpr), gap(fpr))}


def fairness_surrogate(probs: Tensor, y: Tensor, s: Tensor, metric: str, num_groups: int = 2) -> Tensor:
    """Differentiable version of :func:`fairness_differences` on soft decisions: the gap between groups of
    the mean probability of class 1 (over all rows for demographic parity; within each true class, maximised
    over classes, for equalized odds). Cells without rows are skipped."""
    classes = 1 if metric == "demographic_parity" else 2
    cell = s * classes + (0 if classes == 1 else y)
    onehot = torch.nn.functional.one_hot(cell, num_groups * classes).to(probs.dtype)  # (B, G·C)
    counts = onehot.sum(0)
    rate = ((probs[:, None] * onehot).sum(0) / counts.clamp_min(1)).reshape(num_groups, classes)
    valid = counts.reshape(num_groups, classes) > 0
    hi = rate.masked_fill(~valid, float("-inf")).max(0).values
    lo = rate.masked_fill(~valid, float("inf")).min(0).values
    gaps = torch.where(valid.sum(0) >= 2, hi - lo, torch.zeros_like(hi))
    return gaps.max()


@dataclass
class BiasMitigation(Requirement):
    """Reduce the dependence of the decisions on a sensitive attribute ``s``.

    Training loss: :func:`fairness_surrogate` above ``target`` (``relu(gap - target)``). Measure (exact, on
    ``argmax`` decisions): ``dp_difference`` and ``eo_difference`` (:func:`fairness_differences`); ``level`` is
    the one named by ``metric``. No gates: the metanetwork changes weights and biases only.

    Args:
        metric: ``"equalized_odds"`` or ``"demographic_parity"``. target: tolerated gap. num_groups: values of ``s``.

    Raises:
        ValueError: for an unknown metric, a target outside ``[0, 1]`` or fewer than 2 groups (at construction);
            at :meth:`setup` or in :meth:`loss`, data without a sensitive attribute.
    """

    metric: str = "equalized_odds"
    target: float = 0.0
    num_groups: int = 2
    name: ClassVar[str] = "bias_mitigation"

    def __post_init__(self) -> None:
        if self.metric not in ("equalized_odds", "demographic_parity"):
            raise ValueError(f"metric must be 'equalized_odds' or 'demographic_parity', got {self.metric!r}.")
        if not 0.0 <= self.target <= 1.0:
            raise ValueError(f"target is a tolerated gap between group rates and must be in [0, 1], got {self.target}; "
                             "0 asks for equal rates.")
        if self.num_groups < 2:
            raise ValueError(f"num_groups must be >= 2 (the values of the sensitive attribute), got {self.num_groups}.")

    @property
    def level_name(self) -> str:
        return "eo_difference" if self.metric == "equalized_odds" else "dp_difference"

    def setup(self, data: Any | None = None, num_inputs: int | None = None) -> None:
        if data is None:
            return
        train_set = getattr(data, "train_set", None)
        if getattr(data, "sensitive", None) is None or (train_set is not None and len(train_set[0]) < 3):
            raise ValueError(f"bias_mitigation needs a sensitive attribute in every batch, (x, y, s); {type(data).__name__} "
                             "yields none. Use a tabular datamodule with sensitive='sex' (AdultDataModule, GermanCreditDataModule).")

    def _check(self, s: Tensor | None) -> Tensor:
        if s is None:
            raise ValueError("bias_mitigation needs the sensitive attribute: batches must be (x, y, s).")
        return s

    def violation(self, net: NetworkEdit | None, logits: Tensor, y: Tensor, s: Tensor | None) -> Tensor:
        """Signed constraint value ``surrogate gap - target`` (negative when met), for a Lagrangian."""
        return fairness_surrogate(logits.softmax(-1)[:, 1], y, self._check(s), self.metric, self.num_groups) - self.target

    def exact_violation(self, logits: Tensor, y: Tensor, s: Tensor | None) -> Tensor:
        """Signed ``exact gap - target`` on the ``argmax`` decisions of ``logits (N, 2)``, no gradient; 0 when a
        group has no rows in ``s`` (no information), for the multiplier of a proxy-Lagrangian."""
        with torch.no_grad():
            gap = fairness_differences(logits.softmax(-1)[:, 1], y, self._check(s), self.num_groups)[self.level_name]
            every_group = (torch.bincount(s, minlength=self.num_groups) > 0).all()
            return torch.where(every_group, torch.nan_to_num(gap - self.target, nan=0.0), torch.zeros_like(gap))

    def loss(self, net: NetworkEdit | None, logits: Tensor, y: Tensor, s: Tensor | None) -> Tensor:
        return torch.relu(self.violation(net, logits, y, s))

    def measure(self, forward, params, specs, x, y, s) -> dict[str, Tensor]:
        diffs = fairness_differences(forward(x).softmax(-1)[:, 1], y, self._check(s), self.num_groups)
        return {"level": diffs[self.level_name], **diffs}


REQUIREMENTS: dict[str, type[Requirement]] = {r.name: r for r in (WeightPruning, DataMinimisation, BiasMitigation)}
"""Requirement classes by the name used in YAML (``requirement: weight_pruning``)."""


def make_requirement(name: str | Requirement, args: dict[str, Any] | None = None) -> Requirement:
    """The requirement registered as ``name`` built with ``args`` (or ``name`` itself if it is a Requirement).

    Raises:
        ValueError: for an unknown name (the known ones are listed) or arguments the requirement does not take.
    """
    if isinstance(name, Requirement):
        return name
    if name not in REQUIREMENTS:
        raise ValueError(f"Unknown requirement {name!r}; choose one of {sorted(REQUIREMENTS)}.")
    cls = REQUIREMENTS[name]
    try:
        return cls(**(args or {}))
    except TypeError as err:
        accepted = [f.name for f in dataclasses.fields(cls) if f.init]
        raise ValueError(f"Bad arguments {args} for requirement {name!r}: {err}; it accepts {accepted}.") from None
