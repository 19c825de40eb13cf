"""Class-subset specialisation: a model trained on n classes, pruned to serve k of them.

The classifier's rows of the other classes are removed physically and the kept rows are put in the order given, so
output ``j`` of the specialised model is the original class ``classes[j]``. Labels of the subset's samples are mapped
the same way (``classes[j] -> j``): :class:`~lightning_edit.data.TensorDataModule` does it with
``classes=[...], relabel=True``. DISCEDIT's bounds are then one-vs-rest *within* the subset (class ``c`` against the
other ``k - 1``), so a channel that separates only classes the specialised model never sees scores low.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from lightning_edit.discedit.structured import PRUNABLE_TYPES, PRUNING_KEY, pruning_record


def check_classes(classes: Sequence[int], num_outputs: int | None = None) -> list[int]:
    """The class list, checked.

    Raises:
        ValueError: fewer than 2 classes, duplicates, a non-integer, or (with ``num_outputs``) a class outside the
            model's outputs ``[0, num_outputs)``.
    """
    classes = list(classes)
    if len(classes) < 2:
        raise ValueError(f"classes={classes}: a specialised classifier needs at least 2 classes.")
    if any(not isinstance(c, int) or isinstance(c, bool) for c in classes):
        raise ValueError(f"classes={classes} must be integer class indices.")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes={classes} has duplicates.")
    if num_outputs is not None:
        bad = [c for c in classes if not 0 <= c < num_outputs]
        if bad:
            raise ValueError(f"classes {bad} are outside the model's {num_outputs} outputs (0..{num_outputs - 1}).")
    return classes


def subset_batches(batches: Iterable[tuple[Tensor, Tensor]], classes: Sequence[int]) -> Iterator[tuple[Tensor, Tensor]]:
    """The samples of ``classes`` in each ``(x (B, ...), y (B,))`` batch, labels mapped ``classes[j] -> j``; batches
    left empty are skipped. Runs on the batches' device (one boolean index per batch)."""
    for x, y in batches:
        lookup = torch.full((int(max(classes)) + 1,), -1, dtype=torch.long, device=y.device)
        lookup[torch.as_tensor(list(classes), device=y.device)] = torch.arange(len(classes), device=y.device)
        mapped = torch.where(y <= max(classes), lookup[y.clamp(max=max(classes))], -1)
        keep = mapped >= 0
        if bool(keep.any()):
            yield x[keep], mapped[keep]


def output_layer(model: nn.Module) -> tuple[str, nn.Linear]:
    """The classifier output: the last Conv2d/Linear in registration order, which must be a Linear.

    Raises:
        ValueError: if the last such layer is not a Linear.
    """
    name, layer = [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)][-1]
    if not isinstance(layer, nn.Linear):
        raise ValueError(f"The last layer {name!r} is a {type(layer).__name__}, not a Linear classifier; class-subset "
                         "specialisation cuts a Linear output layer's rows.")
    return name, layer


@torch.no_grad()
def keep_classes(model: nn.Module, classes: Sequence[int]) -> None:
    """Cut ``model``'s classifier to the rows of ``classes``, in that order, in place; recorded in the pruning record
    (``"classes"``) so that a checkpoint reloads into the original architecture (:func:`replay_classes`).

    Raises:
        ValueError: as :func:`check_classes` against the current output width, or if the model was already cut to
            other classes.
    """
    name, layer = output_layer(model)
    record = pruning_record(model) or {"input_shape": None, "history": []}
    if record.get("classes") is not None:
        if list(record["classes"]) == list(classes):
            return
        raise ValueError(f"This model is already specialised to classes {record['classes']}; load the original model.")
    classes = check_classes(classes, layer.out_features)
    _cut_rows(layer, classes)
    record["classes"] = list(classes)
    setattr(model, PRUNING_KEY, record)


def replay_classes(model: nn.Module, record: dict | None) -> None:
    """Apply a record's ``"classes"`` cut to a model of the original architecture (idempotent)."""
    classes = (record or {}).get("classes")
    if classes is None or (pruning_record(model) or {}).get("classes") is not None:
        return
    with torch.no_grad():
        _cut_rows(output_layer(model)[1], classes)
    own = pruning_record(model) or dict(record, history=[])
    own["classes"] = list(classes)
    setattr(model, PRUNING_KEY, own)


def _cut_rows(layer: nn.Linear, classes: Sequence[int]) -> None:
    index = torch.as_tensor(list(classes), device=layer.weight.device)
    layer.weight = nn.Parameter(layer.weight.index_select(0, index).clone())
    if layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias.index_select(0, index).clone())
    layer.out_features = len(classes)
