"""Edit metrics of Editable Training (Sinitsin et al. 2020, Sec. 4; the authors' ``evaluate_quality``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lightning_edit.editable.editors import GradientEditor


@dataclass
class EditMetrics:
    """Aggregate over N edits, each applied separately to the *original* model (the authors' ``evaluate_quality``).

    Attributes:
        base_error: test error of the unedited model, in [0, 1].
        success_rate: fraction of edits whose target is the argmax after at most ``k`` editor steps.
        mean_steps: mean editor steps; an edit that already holds counts 0, a failed one counts its step limit.
        drawdown: mean over edits of (edited model's test error - base error), in [0, 1] (x100 for points).
        num_edits: N.
        drawdown_p90: 90th percentile of the per-edit drawdowns, in [0, 1].
        median_latency_s: median wall time of one edit call, in seconds (copy of the model included).
        drawdowns: the N per-edit drawdowns.
    """

    base_error: float
    success_rate: float
    mean_steps: float
    drawdown: float
    num_edits: int
    drawdown_p90: float = float("nan")
    median_latency_s: float = float("nan")
    drawdowns: tuple[float, ...] = field(default=(), repr=False)


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
    editor: Any,
    edit_x: Tensor,
    edit_y: Tensor,
    test_batches: Sequence[tuple[Tensor, Tensor]],
    parameters: Sequence[str] | None = None,
    progress: bool = False,
) -> EditMetrics:
    """Edit the original model once per sample of ``edit_x`` (to ``edit_y``) and measure each edited copy.

    Sinitsin et al. 2020, Sec. 4 (the authors' ``evaluate_quality``): drawdown is the mean over edits of the
    edited model's test error minus the base error; success means the target is the argmax after at most
    ``k`` steps; mean steps counts 0 for an edit that already holds.

    Args:
        model: the original classifier; never modified.
        editor: any editor with ``edit(model, x, y) -> (edited copy, EditResult)``: a
            :class:`~lightning_edit.editable.GradientEditor` (given ``parameters``), or one of
            :mod:`lightning_edit.edit` (e.g. a ``FineTuneEditor``).
        edit_x: ``(N, ...)`` inputs, edited one at a time. edit_y: ``(N,)`` targets.
        test_batches: ``(x, y)`` batches on the model's device on which errors are measured (the paper: the
            test set; use at least 2,000 images for a drawdown read to a fraction of a point).
        parameters: ``fnmatch`` patterns of the edited parameters (GradientEditor only; None: its default).
        progress: show a progress bar (rich).

    Raises:
        ValueError: if ``edit_x`` and ``edit_y`` differ in length, ``test_batches`` is empty, or ``parameters`` is
            given for an editor other than a GradientEditor (it would be ignored).
    """
    if len(edit_x) != len(edit_y):
        raise ValueError(f"{len(edit_x)} edit inputs but {len(edit_y)} edit targets.")
    if not test_batches:
        raise ValueError("test_batches is empty; pass (x, y) batches on which to measure the test error.")
    if parameters is not None and not isinstance(editor, GradientEditor):
        raise ValueError(f"parameters= selects what a GradientEditor edits; {type(editor).__name__} chooses its own "
                         "(e.g. FineTuneEditor(layers=...)). Pass parameters=None.")
    base = error_rate(model, test_batches)
    kwargs = {} if parameters is None else {"parameters": parameters}
    errors, steps, latencies, successes = [], [], [], 0
    indices = range(len(edit_x))
    if progress:
        from rich.progress import track

        indices = track(indices, description=f"editing {len(edit_x)} times", transient=True)
    for i in indices:
        t0 = time.perf_counter()
        edited, result = editor.edit(model, edit_x[i : i + 1], edit_y[i : i + 1], **kwargs)
        latencies.append(time.perf_counter() - t0)
        successes += result.success
        steps.append(result.steps)
        errors.append(error_rate(edited, test_batches))
    n = len(edit_x)
    per_edit = tuple(e - base for e in errors)
    p90 = float(torch.tensor(per_edit).quantile(0.9)) if per_edit else float("nan")
    return EditMetrics(base, successes / max(1, n), sum(steps) / max(1, n), drawdown(base, errors), n,
                       p90, statistics.median(latencies) if latencies else float("nan"), per_edit)


def random_wrong_labels(y: Tensor, num_classes: int, generator: torch.Generator | None = None) -> Tensor:
    """A uniformly random label different from each ``y`` (the paper's edit targets). Shape ``(N,)``."""
    shift = torch.randint(1, num_classes, y.shape, generator=generator).to(y.device)
    return (y + shift) % num_classes
