"""Baselines a metanetwork editor is compared with (Kalogeropoulos, Bouritsas & Panagakis 2025, Sec. 5):
post-processing (magnitude pruning, dropping inputs, per-group decision thresholds), fine-tuning each network
under the requirement, and retraining it from scratch under the requirement; plus the comparison table and
Pareto plot."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_edit.metanet.graph import architecture
from lightning_edit.metanet.requirements import BiasMitigation, DataMinimisation, Requirement, WeightPruning

Masks = dict[str, Tensor]


def _weights(model: nn.Module) -> dict[str, Tensor]:
    return {f"{s.name}.weight": model.get_parameter(f"{s.name}.weight") for s in architecture(model)}


@torch.no_grad()
def magnitude_prune(model: nn.Module, sparsity: float, granularity: str = "weight",
                    min_layer_density: float = 0.0) -> tuple[nn.Module, Masks]:
    """Post-processing for weight pruning: a copy with the smallest weights (global over layers) set to zero,
    and the masks ``{parameter name: 0/1 tensor}``.

    ``granularity="weight"``: the ``round(sparsity · W)`` smallest-magnitude weights. ``"kernel"``: whole conv
    kernels ranked by their RMS (L2 norm / √(k·k), comparable with a single weight's magnitude) and linear weights
    by magnitude, removed from the smallest until ``round(sparsity · W)`` weights are: the granularity of a
    metanetwork editor whose edges are kernels (:class:`~lightning_edit.metanet.requirements.WeightPruning`).
    ``min_layer_density``: every layer keeps at least this fraction of its units, the largest ones, as the
    editor's per-layer floor (:class:`~lightning_edit.metanet.requirements.WeightPruning`); 0 (default): the
    plain global ranking.

    Raises:
        ValueError: an unknown ``granularity``; a sparsity outside [0, 1); a ``min_layer_density`` outside
            [0, 1 - sparsity].
    """
    if granularity not in ("weight", "kernel"):
        raise ValueError(f"granularity must be 'weight' or 'kernel', got {granularity!r}.")
    pruned = copy.deepcopy(model)
    weights = _weights(pruned)
    units = {n: (w.flatten(2).norm(dim=-1) / w[0, 0].numel() ** 0.5 if granularity == "kernel" and w.dim() > 2 else w.abs())
             for n, w in weights.items()}  # per unit: (out, in) for kernels, the weight's own shape otherwise
    score = torch.cat([u.flatten() for u in units.values()])
    size = torch.cat([torch.full((u.numel(),), weights[n].numel() // u.numel(), device=score.device) for n, u in units.items()])
    rule = WeightPruning(sparsity=sparsity, min_layer_density=min_layer_density)
    keep = rule.hard_gates(score, size if granularity == "kernel" else None, [u.numel() for u in units.values()])
    masks, start = {}, 0
    for name, w in weights.items():
        unit_keep = keep[start : start + units[name].numel()].view_as(units[name])
        masks[name] = unit_keep.view(*unit_keep.shape, *[1] * (w.dim() - unit_keep.dim())).expand_as(w).clone()
        w.mul_(masks[name])
        start += units[name].numel()
    return pruned, masks


@torch.no_grad()
def select_inputs_by_norm(model: nn.Module, requirement: DataMinimisation) -> Tensor:
    """Post-processing choice of inputs: keep the ``k`` units whose first-layer columns have the largest
    L2 norm (or all but ``requirement.drop``). Returns a boolean mask ``(F,)`` over input features.

    Raises:
        RuntimeError: if ``requirement`` was not set up (see :meth:`DataMinimisation.setup`).
    """
    w = _weights(model)[f"{architecture(model)[0].name}.weight"]
    col = w.reshape(w.shape[0], w.shape[1], -1).pow(2).sum((0, 2))  # (F,)
    if requirement.unit_of_input is None:
        raise RuntimeError("Set up the DataMinimisation requirement first: requirement.setup(datamodule).")
    units = requirement.unit_of_input
    score = torch.zeros(len(requirement.unit_names)).index_add_(0, units, col.cpu()).sqrt()
    return requirement.keep_units(score).bool()[units].to(w.device)


@torch.no_grad()
def drop_inputs(model: nn.Module, keep: Tensor) -> tuple[nn.Module, Masks]:
    """Post-processing for data minimisation: a copy whose first-layer weights from inputs outside ``keep``
    (bool ``(F,)``) are zero, and the masks."""
    dropped = copy.deepcopy(model)
    name = f"{architecture(model)[0].name}.weight"
    w = dropped.get_parameter(name)
    mask = keep.to(w.dtype).reshape(1, -1, *([1] * (w.dim() - 2))).expand_as(w).clone()
    w.mul_(mask)
    return dropped, {name: mask}


class GroupThresholdClassifier(nn.Module):
    """Post-processing for bias mitigation (Hardt, Price & Srebro 2016, deterministic variant): decide class 1
    when ``P(y=1|x) > thresholds[s]``. ``forward(x, s)`` returns logits ``(N, 2)`` whose argmax is that decision.
    Needs the sensitive attribute at prediction time."""

    def __init__(self, model: nn.Module, thresholds: Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("thresholds", thresholds)

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        p = self.model(x).softmax(-1)[:, 1].clamp(1e-6, 1 - 1e-6)
        t = self.thresholds[s].clamp(1e-6, 1 - 1e-6)
        margin = torch.logit(p) - torch.logit(t)
        return torch.stack([torch.zeros_like(margin), margin], -1)


def _threshold_pairs(p: Tensor, y: Tensor, s: Tensor, requirement: BiasMitigation, t: Tensor) -> tuple[Tensor, Tensor]:
    """Fairness gap and accuracy ``(T, T)`` of every pair of decision thresholds ``t (T,)`` (group 0, group 1)
    applied to ``P(y=1|x) = p (N,)``; the diagonal is one threshold for everyone. Vectorised over the grid.

    Raises:
        ValueError: for a sensitive attribute with other than two groups.
    """
    if requirement.num_groups != 2:
        raise ValueError(f"Threshold post-processing searches two groups; the requirement has {requirement.num_groups}.")
    stats = []
    for g in (0, 1):
        pg, yg = p[s == g], y[s == g]
        decide = pg[None, :] > t[:, None]  # (T, n_g)
        pos, neg = yg.eq(1), yg.eq(0)
        tp, fp = (decide & pos).sum(1).float(), (decide & neg).sum(1).float()
        correct = tp + (~decide & neg).sum(1).float()
        stats.append({"selection": (tp + fp) / max(len(yg), 1), "tpr": tp / pos.sum().clamp_min(1),
                      "fpr": fp / neg.sum().clamp_min(1), "correct": correct})
    a, b = stats
    gap = lambda k: (a[k][:, None] - b[k][None, :]).abs()  # noqa: E731
    gaps = gap("selection") if requirement.metric == "demographic_parity" else torch.maximum(gap("tpr"), gap("fpr"))
    return gaps, (a["correct"][:, None] + b["correct"][None, :]) / len(y)


def _best_within(gaps: Tensor, acc: Tensor, level: float) -> int:
    """Flat index of the most accurate entry with ``gap <= level``, or of the smallest gap if none."""
    ok = gaps <= level + 1e-9
    return int(torch.where(ok, acc, -1.0).argmax()) if ok.any() else int(gaps.argmin())


@torch.no_grad()
def fit_group_thresholds(model: nn.Module, x: Tensor, y: Tensor, s: Tensor, requirement: BiasMitigation, level: float,
                         grid: int = 49) -> GroupThresholdClassifier:
    """Per-group thresholds on ``(x, y, s)`` (validation data) with the highest accuracy among those whose
    fairness gap (``requirement.metric``) is at most ``level``; the smallest gap if none reaches it.
    Exhaustive over a ``grid × grid`` grid of threshold pairs in (0, 1), vectorised.

    Raises:
        ValueError: for a sensitive attribute with other than two groups.
    """
    p = model(x).softmax(-1)[:, 1]
    t = torch.linspace(0.02, 0.98, grid, device=p.device)
    i, j = divmod(_best_within(*_threshold_pairs(p, y, s, requirement, t), level), grid)
    return GroupThresholdClassifier(model, torch.stack([t[i], t[j]]))


class ThresholdClassifier(nn.Module):
    """Post-processing for bias mitigation that, like a metanetwork edit, does not read the sensitive attribute
    at prediction time: decide class 1 when ``P(y=1|x) > threshold``, one threshold for everyone.
    ``forward(x)`` returns logits ``(N, 2)`` whose argmax is that decision."""

    def __init__(self, model: nn.Module, threshold: float) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("threshold", torch.tensor(float(threshold)))

    def forward(self, x: Tensor) -> Tensor:
        p = self.model(x).softmax(-1)[:, 1].clamp(1e-6, 1 - 1e-6)
        margin = torch.logit(p) - torch.logit(self.threshold.clamp(1e-6, 1 - 1e-6))
        return torch.stack([torch.zeros_like(margin), margin], -1)


@torch.no_grad()
def fit_single_threshold(model: nn.Module, x: Tensor, y: Tensor, s: Tensor, requirement: BiasMitigation, level: float,
                         grid: int = 97) -> ThresholdClassifier:
    """One decision threshold on ``(x, y, s)`` (validation data; ``x (N, F)``, ``y (N,)``, ``s (N,)`` in {0, 1}):
    the most accurate one whose fairness gap (``requirement.metric``) is at most ``level``, or the smallest gap
    if none reaches it. ``s`` is used to choose the threshold, never to predict. ``grid`` thresholds evenly
    spaced in (0, 1): the diagonal of the pairs :func:`fit_group_thresholds` searches.

    Raises:
        ValueError: for a sensitive attribute with other than two groups.
    """
    p = model(x).softmax(-1)[:, 1]
    t = torch.linspace(0.01, 0.99, grid, device=p.device)
    gaps, acc = _threshold_pairs(p, y, s, requirement, t)
    return ThresholdClassifier(model, float(t[_best_within(gaps.diagonal(), acc.diagonal(), level)]))


def requirement_penalty(requirement: Requirement, logits: Tensor, y: Tensor, s: Tensor | None) -> Tensor:
    """The part of a requirement's loss that depends on the outputs only (bias mitigation); 0 otherwise
    (pruning and data minimisation are enforced by masks)."""
    if isinstance(requirement, BiasMitigation):
        return requirement.loss(None, logits, y, s)
    return logits.new_zeros(())


def finetune(model: nn.Module, x: Tensor, y: Tensor, s: Tensor | None, requirement: Requirement, masks: Masks | None = None,
             epochs: int = 1, lr: float = 1e-3, batch_size: int = 256, weight: float = 1.0, seed: int = 0) -> nn.Module:
    """Fine-tune a copy of ``model`` with ``cross-entropy + weight · requirement penalty`` (Adam), holding the
    masked weights at zero after every step. ``x (N, F)``, ``y (N,)``, ``s (N,)`` on the model's device."""
    tuned = copy.deepcopy(model).train()
    opt = torch.optim.Adam(tuned.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(batch_size):
            idx = idx.to(x.device)
            logits = tuned(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            loss = loss + weight * requirement_penalty(requirement, logits, y[idx], None if s is None else s[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if masks:
                with torch.no_grad():
                    for name, m in masks.items():
                        tuned.get_parameter(name).mul_(m)
    return tuned.eval()


def retrain(model: nn.Module, x: Tensor, y: Tensor, s: Tensor | None, requirement: Requirement, masks: Masks | None = None,
            epochs: int = 3, seed: int = 0, **kwargs: Any) -> nn.Module:
    """Train ``model``'s architecture from a fresh initialisation under the requirement (masks held from the
    start, penalty in the loss); see :func:`finetune` for the arguments."""
    fresh = copy.deepcopy(model)
    torch.manual_seed(seed)
    for m in fresh.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    if masks:
        with torch.no_grad():
            for name, mask in masks.items():
                fresh.get_parameter(name).mul_(mask)
    return finetune(fresh, x, y, s, requirement, masks, epochs=epochs, seed=seed, **kwargs)


def results_table(rows: list[dict[str, Any]], level_name: str) -> str:
    """Markdown table of ``rows`` (``method``, ``accuracy``, ``level``, ``ms_per_edit``; means over networks)."""
    lines = [f"| method | test accuracy (%) | {level_name} | ms per network | time / metanetwork |", "|---|---|---|---|---|"]
    ref = next((r["ms_per_edit"] for r in rows if r["method"] == "metanetwork"), None)
    for r in rows:
        ms = r.get("ms_per_edit")
        ratio = f"{ms / ref:.1f}×" if ms is not None and ref else "–"
        lines.append(f"| {r['method']} | {100 * r['accuracy']:.2f} | {r['level']:.3f} | "
                     f"{'–' if ms is None else f'{ms:.2f}'} | {ratio} |")
    return "\n".join(lines)


def pareto_plot(rows: list[dict[str, Any]], path: str | Path, level_name: str, title: str = "") -> Path:
    """Two panels: test accuracy vs requirement level per method (means over held-out networks, with each
    network as a faint point), and time per network (log scale; rows with ``time_only`` appear only there).
    Saved as PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.4, 1]})
    for i, r in enumerate(rows):
        color = f"C{i}"
        if r.get("ms_per_edit") is not None:
            bx.barh(r["method"], r["ms_per_edit"], color=color)
        if r.get("time_only"):
            continue
        if r.get("levels"):
            ax.scatter(r["levels"], [100 * a for a in r["accuracies"]], color=color, alpha=0.25, s=12)
        ax.scatter([r["level"]], [100 * r["accuracy"]], color=color, s=80, edgecolor="k", label=r["method"])
    ax.set_xlabel(level_name)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    bx.set_xscale("log")
    bx.set_xlabel("time per network (ms, log)")
    bx.invert_yaxis()
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
