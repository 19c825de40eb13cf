"""A robustness report for a model and for an edit, and the change an edit caused.

The edit protocol follows Brown et al. 2023 (Sec. 4): an edit set (misclassified examples of one class or
subgroup), a disjoint held-out set of the same kind (does the fix generalise?), clean accuracy on the other
images and the collateral shift towards the edit label, L∞ PGD and corruption accuracy, and the robustness of
the edit itself (PGD on the edited examples, against their edit labels)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from lightning_edit.robust.attacks import CORRUPTIONS, gaussian_noise, pgd_attack

DEFAULT_CORRUPTIONS = {"gaussian_noise": 0.2, "blur": 1.0, "contrast": 0.3}
"""Corruption name -> severity of the report's default probes (noise std, blur sigma in pixels, contrast factor)."""


def robustness_report(
    model: nn.Module,
    batches: Sequence[tuple[Tensor, Tensor]],
    eps: float = 0.1,
    pgd_steps: int = 10,
    corruptions: Mapping[str, float] | None = None,
    edit_x: Tensor | None = None,
    edit_y: Tensor | None = None,
    edit_copies: int = 8,
    edit_noise: float = 0.1,
    input_std: float = 1.0,
    seed: int = 0,
    held_out_x: Tensor | None = None,
    held_out_y: Tensor | None = None,
) -> dict[str, float]:
    """Accuracies of ``model`` (eval mode), each in [0, 1].

    Keys: ``clean``, ``pgd`` (L∞ PGD at ``eps`` pixel units), ``corruption/<name>`` (severity as in
    :data:`DEFAULT_CORRUPTIONS`); with an edit set ``edit_x (B, ...)``, ``edit_y (B,)``: ``edit_success``
    (accuracy on ``edit_x`` with ``edit_y``), ``edit_generalisation`` (the same on ``edit_copies`` noisy
    copies of each edit input, Gaussian noise of ``edit_noise`` pixel units) and ``edit_pgd`` (the same under
    L∞ PGD at ``eps``: how robust the edit itself is); with a held-out set of the same kind: ``held_out``.

    Raises:
        ValueError: for ``eps < 0``, no batch, or an empty edit set.
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}.")
    if not batches:
        raise ValueError("robustness_report needs at least one (x, y) batch.")
    corruptions = DEFAULT_CORRUPTIONS if corruptions is None else corruptions
    unknown = set(corruptions) - set(CORRUPTIONS)
    if unknown:
        raise ValueError(f"Unknown corruptions {sorted(unknown)}; choose from {sorted(CORRUPTIONS)}.")
    g = torch.Generator().manual_seed(seed)
    model.eval()
    totals: dict[str, float] = {}
    n = 0
    for x, y in batches:
        with torch.no_grad():
            totals["clean"] = totals.get("clean", 0.0) + float((model(x).argmax(-1) == y).sum())
            for name, severity in corruptions.items():
                xc = CORRUPTIONS[name](x, severity, input_std, g)
                key = f"corruption/{name}"
                totals[key] = totals.get(key, 0.0) + float((model(xc).argmax(-1) == y).sum())
        x_adv = pgd_attack(model, x, y, eps, pgd_steps, input_std=input_std, generator=g)
        with torch.no_grad():
            totals["pgd"] = totals.get("pgd", 0.0) + float((model(x_adv).argmax(-1) == y).sum())
        n += len(y)
    report = {k: v / n for k, v in totals.items()}
    if edit_x is not None:
        if len(edit_x) == 0:
            raise ValueError("The edit set is empty.")
        with torch.no_grad():
            report["edit_success"] = float((model(edit_x).argmax(-1) == edit_y).float().mean())
            noisy = gaussian_noise(edit_x.repeat_interleave(edit_copies, 0), edit_noise, input_std, g)
            report["edit_generalisation"] = float((model(noisy).argmax(-1) == edit_y.repeat_interleave(edit_copies)).float().mean())
        x_adv = pgd_attack(model, edit_x, edit_y, eps, pgd_steps, input_std=input_std, generator=g)
        with torch.no_grad():
            report["edit_pgd"] = float((model(x_adv).argmax(-1) == edit_y).float().mean())
    if held_out_x is not None and len(held_out_x):
        with torch.no_grad():
            report["held_out"] = float((model(held_out_x).argmax(-1) == held_out_y).float().mean())
    return report


def report_change(edited: Mapping[str, float], original: Mapping[str, float]) -> dict[str, float]:
    """``edited - original`` for every key both reports share (negative = the edit cost accuracy)."""
    return {k: edited[k] - original[k] for k in edited if k in original}


@torch.no_grad()
def collateral_shift(original: nn.Module, edited: nn.Module, batches: Sequence[tuple[Tensor, Tensor]], label: int) -> float:
    """Fraction of the images that the edit should leave alone but moved to ``label``.

    Among the images of ``batches`` whose true class is not ``label`` and which ``original`` does not classify as
    ``label``, the fraction that ``edited`` classifies as ``label`` (both models in eval mode). In [0, 1]; 0 if
    no image qualifies.
    """
    original.eval()
    edited.eval()
    moved = total = 0
    for x, y in batches:
        keep = (y != label) & (original(x).argmax(-1) != label)
        moved += int((edited(x[keep]).argmax(-1) == label).sum()) if bool(keep.any()) else 0
        total += int(keep.sum())
    return moved / total if total else 0.0


def compare_edit(
    original: nn.Module, edited: nn.Module, batches: Sequence[tuple[Tensor, Tensor]], edit_x: Tensor, edit_y: Tensor,
    held_out_x: Tensor | None = None, held_out_y: Tensor | None = None, **report_kwargs,
) -> dict[str, dict[str, float] | float]:
    """The edit protocol in one call: :func:`robustness_report` of both models, their change, and the collateral
    shift towards the edit label (the most frequent label of ``edit_y``).

    Returns:
        ``{"original": {...}, "edited": {...}, "change": {...}, "collateral_shift": float}``.

    Raises:
        ValueError: as :func:`robustness_report`.
    """
    kw = dict(edit_x=edit_x, edit_y=edit_y, held_out_x=held_out_x, held_out_y=held_out_y, **report_kwargs)
    base = robustness_report(original, batches, **kw)
    after = robustness_report(edited, batches, **kw)
    label = int(torch.mode(edit_y.cpu()).values)
    return {"original": base, "edited": after, "change": report_change(after, base),
            "collateral_shift": collateral_shift(original, edited, batches, label)}
