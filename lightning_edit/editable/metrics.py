"""Edit metrics of Editable Training (Sinitsin et al. 2020, Sec. 4; the authors' ``evaluate_quality``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_edit.editable.editors import GradientEditor


@dataclass
class EditMetrics:
    """Aggregate over N edits of the *original* model.

    Attributes:
        base_error: test error of the unedited model, in [0, 1].
        success_rate: fraction of edits that succeeded within the step limit.
        mean_steps: mean number of editor steps.
        drawdown: mean (edited error - base error), in [0, 1] (multiply by 100 for points).
        num_edits: N.
    """

    base_error: float
    success_rate: float
    mean_steps: float
    drawdown: float
    num_edits: int


@torch.no_grad()
def error_rate(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> float:
    """Top-1 error of ``model`` (eval mode) over ``(x, y)`` batches, in [0, 1]."""
    model.eval()
    wrong = total = 0
    for x, y in batches:
        wrong += int((model(x).argmax(-1) != y).sum())
        total += len(y)
    return wrong / max(1, total)


def drawdown(base_error: float, edited_errors: Sequence[float]) -> float:
    """Mean increase of the test error after an edit: ``mean(edited_errors) - base_error``."""
    return sum(edited_errors) / max(1, len(edited_errors)) - base_error


def evaluate_edits(
    model: nn.Module,
    editor: GradientEditor,
    edit_x: Tensor,
    edit_y: Tensor,
    test_batches: Sequence[tuple[Tensor, Tensor]],
    parameters: Sequence[str] | None = None,
) -> EditMetrics:
    """Edit the original model once per sample of ``edit_x`` (to ``edit_y``) and measure each edited copy.

    Shapes: ``edit_x (N, ...)``, ``edit_y (N,)``; ``test_batches`` of ``(x, y)`` on the model's device.
    """
    base = error_rate(model, test_batches)
    errors, steps, successes = [], [], 0
    for i in range(len(edit_x)):
        edited, result = editor.edit(model, edit_x[i : i + 1], edit_y[i : i + 1], parameters)
        successes += result.success
        steps.append(result.steps)
        errors.append(error_rate(edited, test_batches))
    n = len(edit_x)
    return EditMetrics(base, successes / max(1, n), sum(steps) / max(1, n), drawdown(base, errors), n)


def random_wrong_labels(y: Tensor, num_classes: int, generator: torch.Generator | None = None) -> Tensor:
    """A uniformly random label different from each ``y`` (the paper's edit targets). Shape ``(N,)``."""
    shift = torch.randint(1, num_classes, y.shape, generator=generator).to(y.device)
    return (y + shift) % num_classes
