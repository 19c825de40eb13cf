"""How a sceptic measures class unlearning: accuracy, membership inference, relearn time, durability.

Definitions follow the machine-unlearning literature (Jia et al., "Model Sparsity Can Simplify Machine Unlearning",
NeurIPS 2023, App. C.3; Fan et al., "SalUn", ICLR 2024, Sec. 5): forget accuracy (FA, on the forgotten classes) and
remaining accuracy (RA), **MIA efficacy** (the share of forgotten training samples that a membership-inference
attack calls non-members), **relearn time** (how many fine-tuning steps on a few forget samples bring the class
back), and **durability** (forget accuracy after further training on the remaining classes). Each is compared with
the model retrained without the class, the gold standard.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

Batches = Iterable[tuple[Tensor, Tensor]]
SIGNALS = ("confidence", "entropy")
"""The per-sample signals a membership-inference attack can read (:func:`attack_signal`)."""


def _as_batches(data: Batches | tuple[Tensor, Tensor], batch_size: int = 512) -> list[tuple[Tensor, Tensor]]:
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor) and isinstance(data[1], Tensor):
        return list(zip(data[0].split(batch_size), data[1].split(batch_size)))
    return [(b[0], b[1]) for b in data]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class _Detached:
    """A trainable copy of a module's parameters and buffers, run through the module with :func:`torch.func.functional_call`.

    The module itself is never changed (no deep copy either: a LightningModule attached to a Trainer copies badly).
    ``torch.nn.utils.prune`` masks stay in force: their hooks recompute ``weight`` from the copied ``weight_orig``.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.params = {n: p.detach().clone().requires_grad_(p.requires_grad) for n, p in model.named_parameters()}
        self.buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        # pruning hooks write `weight` as a plain attribute at every forward: put the module's own back afterwards
        self.masked = [(m, n[: -len("_mask")]) for m in model.modules() for n, _ in m.named_buffers(recurse=False)
                       if n.endswith("_mask") and hasattr(m, n[: -len("_mask")] + "_orig")]

    def __call__(self, x: Tensor, train: bool = False) -> Tensor:
        was_training = self.model.training
        saved = [getattr(m, n) for m, n in self.masked]
        self.model.train(train)
        try:
            return torch.func.functional_call(self.model, {**self.params, **self.buffers}, (x,))
        finally:
            self.model.train(was_training)
            for (m, n), value in zip(self.masked, saved):
                setattr(m, n, value)

    def trainable(self) -> list[Tensor]:
        return [p for p in self.params.values() if p.requires_grad]


@torch.no_grad()
def predictions(model: nn.Module, data: Batches | tuple[Tensor, Tensor], _copy: _Detached | None = None
                ) -> tuple[Tensor, Tensor]:
    """Eval-mode softmax probabilities ``(N, K)`` and targets ``(N,)`` of ``data`` (batches or an ``(x, y)`` pair), on CPU.

    The model's training mode is restored afterwards; inputs are moved to the model's device.
    """
    was_training = model.training
    model.eval()
    device = _device(model)
    run = (lambda x: _copy(x)) if _copy is not None else model
    try:
        probs, targets = [], []
        for x, y in _as_batches(data):
            probs.append(F.softmax(run(x.to(device)).float(), -1).cpu())
            targets.append(y.cpu())
    finally:
        model.train(was_training)
    if not probs:
        raise ValueError("No batch to evaluate: the data is empty.")
    return torch.cat(probs), torch.cat(targets)


def forget_remaining_accuracy(
    model: nn.Module, data: Batches | tuple[Tensor, Tensor], forget_classes: Sequence[int],
) -> tuple[float, float]:
    """Forget accuracy (on samples of ``forget_classes``) and remaining accuracy (the others), micro averages in [0, 1].

    Raises:
        ValueError: if ``data`` holds no sample of the forget classes or none of the others.
    """
    probs, y = predictions(model, data)
    forget = torch.isin(y, torch.tensor(list(forget_classes)))
    if forget.all() or not forget.any():
        raise ValueError("The data needs samples of both the forget classes and the remaining ones.")
    right = probs.argmax(-1) == y
    return float(right[forget].float().mean()), float(right[~forget].float().mean())


def attack_signal(probs: Tensor, targets: Tensor, signal: Literal["confidence", "entropy"] = "confidence") -> np.ndarray:
    """The per-sample feature a membership-inference attack reads: ``(N, 1)`` float64.

    ``"confidence"``: the softmax probability of the true class; ``"entropy"``: the entropy of the softmax (nats).
    """
    if signal == "confidence":
        value = probs.gather(1, targets.long()[:, None]).squeeze(1)
    elif signal == "entropy":
        value = -(probs * probs.clamp_min(1e-12).log()).sum(1)
    else:
        raise ValueError(f"signal must be one of {SIGNALS}, got {signal!r}.")
    return value.double().numpy()[:, None]


def mia_efficacy(
    model: nn.Module,
    members: Batches | tuple[Tensor, Tensor],
    non_members: Batches | tuple[Tensor, Tensor],
    forgotten: Batches | tuple[Tensor, Tensor],
    signal: Literal["confidence", "entropy"] = "confidence",
    seed: int = 0,
) -> float:
    """MIA efficacy: the share of forgotten training samples a membership-inference attack calls non-members.

    The attack is a threshold on the model's ``signal``, fitted on ``members`` (remaining-class *training* samples)
    against ``non_members`` (held-out samples the model never trained on): the threshold that maximises balanced
    accuracy (Youden's J on scikit-learn's :func:`~sklearn.metrics.roc_curve`; the metric-based attack of Song &
    Mittal, USENIX Security 2021). It is applied to ``forgotten`` (the forget classes' training samples): a sample on
    the non-member side (confidence below, or entropy above, the threshold) counts. Higher is more forgotten; the model
    retrained without the class is the reference (Fan et al., SalUn, ICLR 2024, Sec. 5, "MIA-Efficacy").

    Departure: Jia et al.'s code (used by SalUn) fits an RBF SVC. When a model barely overfits, members and
    non-members look alike, and a fitted classifier's answer near zero confidence (where forgotten samples sit) is set
    by its intercept: an SVC, then a logistic regression, flipped one model's efficacy between 0 and 1 in our runs,
    the retrained model's included. A threshold is monotone in the signal, so a forgotten sample that the model is
    less confident on than the members are is always called a non-member.

    Args:
        model: the classifier ``(N, ...) -> (N, K)``.
        members, non_members, forgotten: ``(x, y)`` batches, or one ``(x, y)`` pair of tensors each.
        signal: ``"confidence"`` (true-class probability) or ``"entropy"`` (:func:`attack_signal`).
        seed: seed of the subsampling (the larger of members / non-members is subsampled to the smaller).

    Returns:
        a fraction in [0, 1].

    Raises:
        ValueError: for an unknown signal or an empty set.
    """
    from sklearn.metrics import roc_curve

    if signal not in SIGNALS:
        raise ValueError(f"signal must be one of {SIGNALS}, got {signal!r}.")
    sign = 1.0 if signal == "confidence" else -1.0  # high = member-like
    member, non_member, forgot = (sign * attack_signal(*predictions(model, d), signal)[:, 0]
                                  for d in (members, non_members, forgotten))
    rng = np.random.default_rng(seed)
    n = min(len(member), len(non_member))
    member = member[rng.choice(len(member), n, replace=False)]
    non_member = non_member[rng.choice(len(non_member), n, replace=False)]
    fpr, tpr, thresholds = roc_curve(np.r_[np.ones(n), np.zeros(n)], np.r_[member, non_member])
    threshold = thresholds[int(np.argmax(tpr - fpr))]  # member iff signal >= threshold
    return float((forgot < threshold).mean())


def relearn_steps(
    model: nn.Module,
    forget_samples: tuple[Tensor, Tensor],
    forget_eval: Batches | tuple[Tensor, Tensor],
    forget_classes: Sequence[int],
    target: float = 0.5,
    max_steps: int = 100,
    lr: float = 1e-3,
    optimizer: Callable[..., torch.optim.Optimizer] | None = None,
) -> int | None:
    """Relearn time: full-batch steps on a few forget-class samples until forget accuracy on held-out ones reaches ``target``.

    A copy of ``model``'s parameters and buffers is trained (:func:`torch.func.functional_call`, train mode, cross-entropy, Adam at ``lr`` unless ``optimizer`` is given) on
    ``forget_samples`` (e.g. 32 training images of the forgotten class); after each step its accuracy on
    ``forget_eval`` (held-out images of the class, eval mode) is measured. Masks from ``torch.nn.utils.prune`` stay in
    force, as in the edited model. The retrained model's relearn time is the reference: an edit that only hides a
    class relearns it in a few steps (the knowledge is still in the weights); one that removed it is as slow as
    retraining (Fan et al., SalUn, ICLR 2024; METHODS.md "Relearning").

    Args:
        model: the unlearned classifier (not modified).
        forget_samples: ``(x (n, ...), y (n,))`` forget-class samples to relearn from.
        forget_eval: held-out forget-class samples.
        forget_classes: the forgotten classes (accuracy is taken on their samples in ``forget_eval``).
        target: forget accuracy to regain, in (0, 1].
        max_steps: steps to try.

    Returns:
        the number of steps (0: already at ``target``), or None if ``max_steps`` do not reach it.

    Raises:
        ValueError: for a target outside (0, 1] or ``max_steps < 1``.
    """
    if not 0.0 < target <= 1.0 or max_steps < 1:
        raise ValueError(f"Need 0 < target <= 1 and max_steps >= 1, got target={target}, max_steps={max_steps}.")
    student = _Detached(model)
    device = _device(model)
    x, y = forget_samples[0].to(device), forget_samples[1].to(device)
    opt = (optimizer or (lambda p: torch.optim.Adam(p, lr=lr)))(student.trainable())
    classes = torch.tensor(list(forget_classes))

    def accuracy() -> float:
        probs, targets = predictions(model, forget_eval, student)
        keep = torch.isin(targets, classes)
        return float((probs.argmax(-1)[keep] == targets[keep]).float().mean())

    if accuracy() >= target:
        return 0
    for step in range(1, max_steps + 1):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(student(x, train=True), y).backward()
        opt.step()
        if accuracy() >= target:
            return step
    return None


def durability(
    model: nn.Module,
    remaining_batches: Sequence[tuple[Tensor, Tensor]],
    evaluation: Batches | tuple[Tensor, Tensor],
    forget_classes: Sequence[int],
    epochs: int = 3,
    lr: float = 1e-3,
    optimizer: Callable[..., torch.optim.Optimizer] | None = None,
) -> list[float]:
    """Durability: forget accuracy after each of ``epochs`` epochs of ordinary training on the remaining classes.

    A copy of ``model``'s parameters and buffers is trained with cross-entropy (Adam at ``lr`` unless ``optimizer`` is given) on
    ``remaining_batches``; BatchNorm statistics update as in any training run. A forgetting that came from stale
    statistics or a hidden output returns here.

    Returns:
        ``[forget accuracy after epoch 1, ..., after epoch `epochs`]`` on ``evaluation``.

    Raises:
        ValueError: for ``epochs < 1``, or remaining batches that contain a forget class.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}.")
    classes = torch.tensor(list(forget_classes))
    if any(torch.isin(y.cpu(), classes).any() for _, y in remaining_batches):
        raise ValueError("remaining_batches contain samples of the forget classes; filter them out first.")
    student = _Detached(model)
    device = _device(model)
    opt = (optimizer or (lambda p: torch.optim.Adam(p, lr=lr)))(student.trainable())
    out = []
    for _ in range(epochs):
        for x, y in remaining_batches:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(student(x.to(device), train=True), y.to(device)).backward()
            opt.step()
        probs, targets = predictions(model, evaluation, student)
        keep = torch.isin(targets, classes)
        out.append(float((probs.argmax(-1)[keep] == targets[keep]).float().mean()))
    return out


def subsample(data: tuple[Tensor, Tensor], classes: Sequence[int], n: int | None = None, exclude: bool = False,
              generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The samples of ``classes`` (or, with ``exclude``, of every other class), at most ``n`` of them at random."""
    x, y = data
    keep = torch.isin(y, torch.tensor(list(classes)))
    keep = ~keep if exclude else keep
    idx = torch.nonzero(keep).flatten()
    if n is not None and len(idx) > n:
        idx = idx[torch.randperm(len(idx), generator=generator)[:n]]
    return x[idx], y[idx]


__all__ = ["SIGNALS", "attack_signal", "durability", "forget_remaining_accuracy", "mia_efficacy", "predictions",
           "relearn_steps", "subsample"]
