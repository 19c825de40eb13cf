"""Component scores: DISCEDIT-SP / DISCEDIT-U scores from TV bounds, and the L1-norm and random baselines."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

import torch
from torch import Tensor, nn

from lightning_edit.discedit.moments import ClassConditionalMoments, FeatureKind, collect_moments
from lightning_edit.discedit.witness import fisher_bound, generic_witness_bound, mpm_bound, robust_fisher_bound


class Witness(NamedTuple):
    """A witness choice: which per-component feature is collected and which bound turns moments into a score."""

    feature: FeatureKind
    bound: Callable[..., Tensor]
    uses_covariance: bool = True


WITNESS_FUNCTIONS: dict[str, Witness] = {
    "fisher": Witness("quadratic", fisher_bound),
    "fisher_linear": Witness("linear", fisher_bound),
    "fisher_energy": Witness("mean_energy", fisher_bound),
    "robust_fisher": Witness("quadratic", robust_fisher_bound),
    "mpm": Witness("quadratic", mpm_bound),
    "exp_norm": Witness("exp_norm", generic_witness_bound, uses_covariance=False),
}
"""Witness functions by name: the feature map each reads and the TV lower bound it computes (METHODS.md, Sec. 3)."""


def check_discedit_options(importance: str, **options: tuple[object, object]) -> None:
    """Refuse DISCEDIT-only options (``name=(value, default)``) set away from their default under another importance.

    Raises:
        ValueError: naming every such option, when ``importance != "discedit"``: it would not be read.
    """
    changed = [f"{name}={value!r}" for name, (value, default) in options.items() if value != default]
    if importance != "discedit" and changed:
        raise ValueError(f"{', '.join(changed)} only change(s) DISCEDIT's scores; importance={importance!r} does not "
                         "read them: use importance='discedit', or drop them.")


def check_random_seed(importance: str, seed: int) -> None:
    """Refuse a ``seed`` other than 0 when the importance is not ``"random"``, the only one that reads it.

    Raises:
        ValueError: naming the seed and the importance.
    """
    if seed != 0 and importance != "random":
        raise ValueError(f"seed={seed} seeds the random baseline only; importance={importance!r} does not read it: "
                         "use importance='random', or drop seed.")


def get_witness(name: str) -> Witness:
    """Look up a witness by name.

    Raises:
        ValueError: for an unknown name (the message lists the valid ones).
    """
    if name not in WITNESS_FUNCTIONS:
        raise ValueError(f"Unknown witness {name!r}; choose one of {sorted(WITNESS_FUNCTIONS)}.")
    return WITNESS_FUNCTIONS[name]


def class_vs_rest_bounds(moments: ClassConditionalMoments, witness: str | Witness = "fisher") -> Tensor:
    """TV lower bound between P_c (class c) and Q_c (all other classes) for every class and component.

    Returns:
        ``(K, C)`` bounds in [0, 1]; NaN in rows of classes absent from the data (or with no rest).
    """
    w = get_witness(witness) if isinstance(witness, str) else witness
    mean_p, cov_p, mean_q, cov_q = moments.one_vs_rest()
    if w.uses_covariance:
        bounds = w.bound(mean_p, cov_p, mean_q, cov_q)
    else:
        second = lambda m, c: (c + m.unsqueeze(-1) * m.unsqueeze(-2))[..., 0, 0]  # noqa: E731
        bounds = w.bound(mean_p[..., 0], second(mean_p, cov_p), mean_q[..., 0], second(mean_q, cov_q))
    rest = moments.count.sum() - moments.count
    valid = (moments.count > 0) & (rest > 0)
    return torch.where(valid[:, None], bounds, torch.nan)


def pruning_scores(
    moments: ClassConditionalMoments, witness: str | Witness = "fisher", reduction: str = "min"
) -> Tensor:
    """DISCEDIT-SP score ``r_j = min_c TV-bound(P_c, Q_c)`` over the classes present; low = prunable.

    ``reduction="min"`` is the paper's and the authors' code's rule (a channel's worst class).
    ``"max"`` (a channel is kept if it separates *any* one class from the rest) and ``"mean"`` are
    offered for comparison; see the benchmark in the README.

    Returns:
        ``(C,)`` float64.

    Raises:
        ValueError: for an unknown reduction.
    """
    bounds = class_vs_rest_bounds(moments, witness)
    if reduction == "min":
        return torch.where(bounds.isnan(), torch.inf, bounds).amin(0)
    if reduction == "max":
        return torch.where(bounds.isnan(), -torch.inf, bounds).amax(0)
    if reduction == "mean":
        return bounds.nanmean(0)
    raise ValueError(f"reduction must be 'min', 'max' or 'mean', got {reduction!r}.")


def unlearning_scores(moments: ClassConditionalMoments, forget_class: int, witness: str | Witness = "fisher") -> Tensor:
    """DISCEDIT-U score ``r_j = TV-bound(P_c, Q_c)`` for the forget class ``c``; high = mask it.

    Returns:
        ``(C,)`` float64; NaN if class ``c`` has no sample.
    """
    return class_vs_rest_bounds(moments, witness)[forget_class]


def l1_norm_scores(module: nn.Module) -> Tensor:
    """L1 norm of each output filter / neuron's weights (Li et al. 2017 baseline). Shape ``(C_out,)``."""
    return module.weight.detach().abs().flatten(1).sum(1).to(torch.float64)


def random_scores(num_components: int, generator: torch.Generator | None = None) -> Tensor:
    """Uniform random scores, shape ``(num_components,)`` (the random-selection baseline)."""
    return torch.rand(num_components, generator=generator, dtype=torch.float64)


def score_components(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    importance: str,
    score: Callable[[ClassConditionalMoments, Witness], Tensor],
    batches: Iterable[tuple[Tensor, Tensor]] | None = None,
    num_classes: int | None = None,
    witness: str = "fisher",
    reduce_sum: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
    check_counts: Callable[[Tensor], None] | None = None,
    site: str = "conv",
) -> dict[str, Tensor]:
    """Scores of every output component of ``layers`` by one of three importances.

    ``site``: where DISCEDIT reads each component's map (``"conv"`` or ``"activation"``, see
    :func:`~lightning_edit.discedit.collect_moments`).

    ``"discedit"``: one eval-mode pass over calibration ``batches`` collects class-conditional moments
    (summed by ``reduce_sum`` across DDP ranks when given), ``check_counts`` validates the per-class
    sample counts ``(K,)``, then ``score(moments, witness)`` maps each layer to ``(C,)``.
    ``"l1"``: filter L1 norms. ``"random"``: uniform (seeded by ``generator``).

    Returns:
        layer name -> ``(C_out,)`` float64.

    Raises:
        ValueError: for an unknown importance, missing ``batches``/``num_classes`` for DISCEDIT, no
            calibration batch, non-finite (NaN/inf) statistics or scores (naming the first such layer); and
            whatever ``check_counts`` raises.
    """
    if importance == "l1":
        scores = {n: l1_norm_scores(m) for n, m in layers.items()}
        check_finite(scores, "l1 scores (weights)")
        return scores
    if importance == "random":
        return {n: random_scores(m.weight.shape[0], generator) for n, m in layers.items()}
    if importance != "discedit":
        raise ValueError(f"importance must be 'discedit', 'l1' or 'random', got {importance!r}.")
    if batches is None or num_classes is None:
        raise ValueError("DISCEDIT scores need calibration `batches` of (x, y) and `num_classes`.")
    w = get_witness(witness)
    moments = collect_moments(model, layers, batches, num_classes, w.feature, site=site)
    if not moments:
        raise ValueError("No calibration batch reached the scored layers; is the calibration loader empty?")
    names, widths = list(moments), [m.sum.shape[1] for m in moments.values()]
    # every layer saw the same samples: one joint problem, so the bound (and any DDP all-reduce) runs once for all
    # layers instead of once per layer (the iterative witnesses cost per call, not per component)
    joint = ClassConditionalMoments.cat(list(moments.values()))
    if reduce_sum is not None:
        for m in [joint] if joint is not None else moments.values():
            m.all_reduce(reduce_sum)
    if joint is not None:
        moments = dict(zip(names, joint.split(widths)))
    if check_counts is not None:
        check_counts(next(iter(moments.values())).count)
    check_finite({n: torch.stack([m.sum.sum(), m.sum_outer.sum()]) for n, m in moments.items()},
                 "calibration statistics (activations)")
    raw = score(joint, w).split(widths) if joint is not None else [score(m, w) for m in moments.values()]
    scores = dict(zip(names, raw))
    check_finite(scores, f"{importance} scores")
    return scores


def check_finite(tensors: Mapping[str, Tensor], what: str) -> None:
    """Raise before anything changes if any tensor holds NaN/inf, naming the first such layer (one host sync).

    Raises:
        ValueError: naming the layer, for non-finite values.
    """
    if not tensors:
        return
    finite = torch.stack([torch.isfinite(t).all() for t in tensors.values()]).cpu()
    if not bool(finite.all()):
        names = list(tensors)
        first = names[int((~finite).nonzero()[0])]
        raise ValueError(
            f"Non-finite (NaN/inf) {what} at layer {first!r} (first of {int((~finite).sum())} such layers); the model "
            "was not changed. Check its weights and inputs for NaN/inf (e.g. a diverged training run or "
            "un-normalised data) before editing."
        )
