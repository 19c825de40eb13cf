"""A robustness report for a model and for an edit (Brown et al. 2023: clean, adversarial and corruption
accuracy, edit success and edit generalisation), and the change an edit caused."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from lightning_edit.robust.attacks import CORRUPTIONS, gaussian_noise, pgd_attack

DEFAULT_CORRUPTIONS = {"gaussian_noise": 0.2, "blur": 1.0, "contrast": 0.3}


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
) -> dict[str, float]:
    """Accuracies of ``model`` (eval mode), each in [0, 1].

    Keys: ``clean``, ``pgd`` (L∞ PGD at ``eps`` pixel units), ``corruption/<name>`` (severity as in
    :data:`DEFAULT_CORRUPTIONS`), and with an edit set: ``edit_success`` (accuracy on ``edit_x`` with
    ``edit_y``) and ``edit_generalisation`` (the same on ``edit_copies`` noisy copies of each edit input,
    Gaussian noise of ``edit_noise`` pixel units).

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
    return report


def report_change(edited: Mapping[str, float], original: Mapping[str, float]) -> dict[str, float]:
    """``edited - original`` for every key both reports share (negative = the edit cost accuracy)."""
    return {k: edited[k] - original[k] for k in edited if k in original}
