"""Physical channel removal with torch-pruning's dependency graph (DepGraph, Fang et al., CVPR 2023).

DISCEDIT decides *which* channels go; torch-pruning removes them from every coupled layer (the
next conv's input channels, BatchNorm, residual additions, flatten) and keeps a history that
replays the same removal on a fresh copy of the architecture (checkpoint reload).
"""

from __future__ import annotations

import copy
import fnmatch
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch_pruning as tp
from torch import Tensor, nn

PRUNING_KEY = "lightning_edit_pruning"
"""State-dict key of the pruning record (a uint8 tensor of JSON) and attribute name on the pruned module."""

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)


def prunable_layers(model: nn.Module, patterns: Sequence[str] | None = None) -> dict[str, nn.Module]:
    """Conv2d and Linear layers whose output channels may be pruned.

    Args:
        model: the network (names are relative to it).
        patterns: ``fnmatch`` patterns of module names (``"model.features.*"``); None selects every
            Conv2d/Linear except the last one in registration order (the classifier output).

    Returns:
        name -> module, in registration order.

    Raises:
        ValueError: if nothing matches (the message lists the candidate names).
    """
    candidates = {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    if patterns is None:
        layers = dict(list(candidates.items())[:-1])
    else:
        layers = {n: m for n, m in candidates.items() if any(fnmatch.fnmatchcase(n, p) for p in patterns)}
    if not layers:
        raise ValueError(
            f"No prunable layer found (patterns={patterns}). Conv2d/Linear layers in the model: "
            f"{list(candidates) or 'none'}; the last one is the classifier output and is never pruned by default."
        )
    return layers


def build_dependency_graph(model: nn.Module, example_input: Tensor) -> tp.DependencyGraph:
    """Trace ``model`` on ``example_input`` (eval mode, so BatchNorm statistics are untouched; grad enabled)."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)
    finally:
        model.train(was_training)


@dataclass
class ChannelGroup:
    """Output channels that torch-pruning must remove together (e.g. every conv adding into one residual stream).

    Attributes:
        root: name of the layer the group is addressed by.
        width: current number of channels.
        members: scored layer name -> (root indices, that layer's channel indices), both ``(width,)`` long.
    """

    root: str
    width: int
    members: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)


def channel_groups(model: nn.Module, dg: tp.DependencyGraph, layers: Mapping[str, nn.Module]) -> list[ChannelGroup]:
    """The dependency groups whose out-channel items include at least one layer of ``layers``."""
    selected = {id(m): n for n, m in layers.items()}
    output_layer = [m for m in model.modules() if isinstance(m, PRUNABLE_TYPES)][-1:]
    groups = []
    for group in dg.get_all_groups(ignored_layers=output_layer, root_module_types=PRUNABLE_TYPES):
        root_module = group[0].dep.target.module
        cg = ChannelGroup(dg._module2name[root_module], len(group[0].idxs))
        for item in group:
            module = item.dep.target.module
            if id(module) in selected and dg.is_out_channel_pruning_fn(item.dep.handler):
                cg.members[selected[id(module)]] = (torch.as_tensor(item.root_idxs), torch.as_tensor(item.idxs))
        if cg.members:
            groups.append(cg)
    return groups


def group_scores(group: ChannelGroup, layer_scores: Mapping[str, Tensor]) -> Tensor:
    """Score of each channel of a group: the maximum over its scored member layers.

    A channel of a residual stream is non-discriminative only if every layer writing into it is.

    Returns:
        ``(group.width,)`` float64 (``-inf`` where no member was scored).
    """
    out = torch.full((group.width,), -torch.inf, dtype=torch.float64)
    for name, (root_idx, idx) in group.members.items():
        if name in layer_scores:
            s = layer_scores[name].detach().to("cpu", torch.float64)[idx]
            out[root_idx] = torch.maximum(out[root_idx], s)
    return out


def select_channels(
    groups: Sequence[ChannelGroup],
    scores: Mapping[str, Tensor],
    target_widths: Mapping[str, int],
    scope: Literal["layer", "global"] = "layer",
    min_channels: int | None = None,
) -> dict[str, list[int]]:
    """Choose the lowest-scored channels to remove.

    Args:
        groups: from :func:`channel_groups`.
        scores: group root -> ``(width,)`` channel scores (low = remove first).
        target_widths: group root -> width to reach.
        scope: ``"layer"`` removes ``width - target`` channels of each group; ``"global"`` ranks all
            channels together (TV bounds are comparable across layers: all lie in [0, 1]) and removes
            the same total ``Σ (width - target)``, where the scores are lowest.
        min_channels: with ``scope="global"``, no group goes below this width (default 1).

    Returns:
        group root -> sorted channel indices to remove (groups with nothing to remove are omitted).
    """
    plan: dict[str, list[int]] = {}
    if scope == "layer":
        for g in groups:
            k = g.width - target_widths[g.root]
            if k > 0:
                plan[g.root] = sorted(torch.argsort(scores[g.root], stable=True)[:k].tolist())
        return plan
    budget = sum(max(0, g.width - target_widths[g.root]) for g in groups)
    cand_scores, cand_owner, cand_idx = [], [], []
    for gi, g in enumerate(groups):
        order = torch.argsort(scores[g.root], stable=True)[: max(0, g.width - (min_channels or 1))]
        cand_scores.append(scores[g.root][order])
        cand_owner.append(torch.full_like(order, gi))
        cand_idx.append(order)
    if budget == 0 or not cand_scores:
        return plan
    order = torch.argsort(torch.cat(cand_scores), stable=True)[:budget]
    owners, idxs = torch.cat(cand_owner)[order], torch.cat(cand_idx)[order]
    for gi, g in enumerate(groups):
        chosen = idxs[owners == gi]
        if len(chosen):
            plan[g.root] = sorted(chosen.tolist())
    return plan


def apply_pruning(model: nn.Module, dg: tp.DependencyGraph, plan: Mapping[str, Sequence[int]]) -> list[list[Any]]:
    """Remove the planned output channels (and everything coupled to them) in place.

    Returns:
        torch-pruning's history for these operations, ``[[layer_name, is_out_channel, indices], ...]``.
    """
    modules = dict(model.named_modules())
    start = len(dg.pruning_history())
    for root, idxs in plan.items():
        module = modules[root]
        group = dg.get_pruning_group(module, dg.get_pruner_of_module(module).prune_out_channels, list(idxs))
        group.prune()
    return [list(h) for h in dg.pruning_history()[start:]]


def pruning_record(model: nn.Module) -> dict[str, Any] | None:
    """The record of what was removed from ``model``: ``{"input_shape": [...], "history": [...]}``, or None."""
    return getattr(model, PRUNING_KEY, None)


def append_pruning_record(model: nn.Module, input_shape: Sequence[int], history: list[list[Any]]) -> None:
    record = pruning_record(model) or {"input_shape": list(input_shape), "history": []}
    record["history"] = record["history"] + history
    setattr(model, PRUNING_KEY, record)


def replay_pruning(model: nn.Module, record: Mapping[str, Any] | None) -> bool:
    """Apply a saved pruning record to a model of the original architecture, idempotently.

    :func:`enable_edit_reload` calls it automatically before a pruned state dict loads. Operations
    already applied to ``model`` (a prefix of the record) are skipped.

    Returns:
        True if anything was removed.

    Raises:
        ValueError: if the model was pruned differently from the record.
    """
    if not record or not record.get("history"):
        return False
    done = (pruning_record(model) or {}).get("history", [])
    todo = record["history"][len(done):]
    if [list(map(_plain, h)) for h in done] != [list(map(_plain, h)) for h in record["history"][: len(done)]]:
        raise ValueError("This model was pruned differently from the checkpoint's pruning record; load into a fresh model.")
    if not todo:
        return False
    p = next(model.parameters())
    dg = build_dependency_graph(model, torch.zeros(record["input_shape"], device=p.device, dtype=p.dtype))
    dg.load_pruning_history([list(h) for h in todo])
    append_pruning_record(model, record["input_shape"], [list(h) for h in todo])
    return True


def enable_edit_reload(model: nn.Module) -> nn.Module:
    """Make a pruned or masked ``model``'s state dict reload into a fresh model of the original architecture.

    Pruning (DISCEDIT-SP): the state dict carries the pruning record, replayed before the weights load.
    Masking (DISCEDIT-U, ``torch.nn.utils.prune`` masks): ``<name>_orig`` / ``<name>_mask`` entries
    re-create the masks on the fresh model before they load, so the edit is still in force.

    After this, ``model.state_dict()`` holds ``PRUNING_KEY`` (a uint8 tensor of JSON, safe for
    ``torch.load(weights_only=True)``) once the model is pruned, and loading such a state dict into a
    fresh model of the original architecture prunes it to the saved shapes before the weights load.
    This covers every load path: ``LightningModule.load_from_checkpoint``, ``Trainer.fit(ckpt_path=...)``,
    ``ddp_spawn``'s return of weights to the main process and plain ``load_state_dict``.
    :class:`~lightning_edit.ClassifierModule` calls it in ``__init__``; call it in your own module's ``__init__``.
    Idempotent.

    Returns:
        ``model``.
    """
    if getattr(model, "_lightning_edit_reload_hooks", False):
        return model
    model.register_state_dict_post_hook(_save_record_hook)
    model.register_load_state_dict_pre_hook(_load_record_hook)
    model._lightning_edit_reload_hooks = True
    return model


def _save_record_hook(module: nn.Module, state_dict: dict, prefix: str, _meta: Any) -> None:
    record = pruning_record(module)
    if record is not None:
        state_dict[prefix + PRUNING_KEY] = torch.frombuffer(bytearray(json.dumps(record).encode()), dtype=torch.uint8)


def _load_record_hook(module: nn.Module, state_dict: dict, prefix: str, *_args: Any) -> None:
    blob = state_dict.pop(prefix + PRUNING_KEY, None)
    if blob is not None:
        replay_pruning(module, json.loads(bytes(blob.cpu().tolist()).decode()))
    from torch.nn.utils import prune as torch_prune

    modules = dict(module.named_modules())
    for key in [k for k in state_dict if k.startswith(prefix) and k.endswith("_mask")]:
        owner, _, param = key[len(prefix) : -len("_mask")].rpartition(".")
        sub = modules.get(owner)
        if sub is not None and isinstance(getattr(sub, param, None), nn.Parameter):
            torch_prune.identity(sub, param)  # creates <param>_orig and <param>_mask to load into


def _plain(v: Any) -> Any:
    return [int(i) for i in v] if isinstance(v, (list, tuple, Tensor)) else v


def count_macs_params(model: nn.Module, example_input: Tensor) -> tuple[int, int]:
    """Multiply-accumulates of one forward pass on ``example_input`` and the parameter count (torch-pruning's counter)."""
    macs, params = tp.utils.count_ops_and_params(model, example_input)
    return int(macs), int(params)


def target_width(original: int, sparsity: float, min_channels: int | None) -> int:
    """``round(original · (1 - sparsity))``, raised to ``min_channels`` when given."""
    w = int(math.floor(original * (1.0 - sparsity) + 0.5))
    return max(w, min_channels) if min_channels is not None else w


def parameter_count_after(model: nn.Module, example_input: Tensor, plan: Mapping[str, Sequence[int]]) -> int:
    """Parameter count of a deep copy of ``model`` with ``plan`` applied (``model`` is untouched)."""
    return cost_after(model, example_input, plan, "parameters")


def cost_after(model: nn.Module, example_input: Tensor, plan: Mapping[str, Sequence[int]],
               kind: Literal["parameters", "macs"]) -> int:
    """Parameter count or MACs (torch-pruning's counter, one ``example_input``) of a deep copy of ``model`` with
    ``plan`` applied; ``model`` is untouched."""
    clone = copy.deepcopy(model)
    apply_pruning(clone, build_dependency_graph(clone, example_input), plan)
    if kind == "macs":
        return count_macs_params(clone, example_input)[0]
    return sum(p.numel() for p in clone.parameters())
