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
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch_pruning as tp
from torch import Tensor, nn

PRUNING_KEY = "lightning_edit_pruning"
"""State-dict key of the pruning record (a uint8 tensor of JSON) and attribute name on the pruned module."""

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)


def is_head_attention(module: nn.Module) -> bool:
    """True for a self-attention module in the common ViT (timm) style: an int ``num_heads`` attribute and Linear
    children ``qkv`` (fused, outputs laid out ``(3, num_heads, head_dim)``) and ``proj``. Its whole heads are
    prunable components (:func:`prunable_layers`). Native :class:`torch.nn.MultiheadAttention` is not one."""
    return (isinstance(getattr(module, "num_heads", None), int) and isinstance(getattr(module, "qkv", None), nn.Linear)
            and isinstance(getattr(module, "proj", None), nn.Linear))


def head_dim(name: str, module: nn.Module) -> int:
    """Width of one head of a ViT-style attention ``module`` (its ``head_dim`` attribute, else inferred).

    Raises:
        ValueError: if ``qkv`` / ``proj`` do not hold ``num_heads`` heads of that width (the message names the module
            and what to pass), so removing whole heads could not keep ``num_heads`` / ``head_dim`` consistent.
    """
    heads, qkv, proj = module.num_heads, module.qkv, module.proj
    width = getattr(module, "head_dim", None)
    if not isinstance(width, int):
        width = qkv.out_features // (3 * heads) if heads > 0 else 0
    if heads < 1 or width < 1 or qkv.out_features != 3 * heads * width or proj.in_features != heads * width:
        raise ValueError(
            f"Attention module {name!r} has num_heads={module.num_heads}, head_dim={getattr(module, 'head_dim', None)}, "
            f"qkv.out_features={qkv.out_features} and proj.in_features={proj.in_features}; whole-head pruning needs "
            f"qkv.out_features == 3 * num_heads * head_dim and proj.in_features == num_heads * head_dim. Fix the "
            f"attributes, or pass layers= without {name!r} (and without its qkv / proj).")
    return width


def component_count(module: nn.Module) -> int:
    """Prunable components of a layer: heads of a ViT-style attention module, else output channels / neurons."""
    return module.num_heads if is_head_attention(module) else module.weight.shape[0]


def attention_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``(num_heads, head_dim)`` of every ViT-style attention module and :class:`torch.nn.MultiheadAttention` of
    ``model``, by name (what the pruning report prints)."""
    shapes = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            shapes[name] = (m.num_heads, m.embed_dim // m.num_heads)
        elif is_head_attention(m):
            shapes[name] = (m.num_heads, m.proj.in_features // max(m.num_heads, 1))
    return shapes


def prunable_layers(model: nn.Module, patterns: Sequence[str] | None = None, heads: bool = True) -> dict[str, nn.Module]:
    """Conv2d and Linear layers whose output channels may be pruned, and ViT-style attention modules whose heads may.

    In a model with ViT-style attention (:func:`is_head_attention`), the default leaves out each attention's ``qkv``
    and ``proj`` (their channels are heads: the attention module itself stands for them) and every layer writing the
    residual stream (output width equal to the attention's input width: patch embedding, ``proj``, the FFN's second
    Linear), which positional embeddings and class tokens share. FFN hidden neurons stay prunable.

    Args:
        model: the network (names are relative to it).
        patterns: ``fnmatch`` patterns of module names (``"model.features.*"``); None selects every
            Conv2d/Linear except the last one in registration order (the classifier output), with the transformer
            rule above.
        heads: include ViT-style attention modules (whole heads); False for DISCEDIT-U, which masks weights.

    Returns:
        name -> module, in registration order.

    Raises:
        ValueError: if nothing matches (the message lists the candidate names), a pattern selects an attention
            module's ``qkv`` or ``proj`` (name the attention module instead), or a selected attention module's head
            count cannot be kept consistent (:func:`head_dim`).
    """
    attention = {n: m for n, m in model.named_modules() if is_head_attention(m)} if heads else {}
    candidates = {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES) or n in attention}
    if patterns is None:
        all_attention = [m for _, m in attention_items(model)]  # every one, whether or not its heads are selected
        linears = [n for n in candidates if n not in attention]
        keep = {*linears[:-1], *attention}
        inner = {id(m.qkv) for m in all_attention} | {id(m.proj) for m in all_attention}
        stream = {m.qkv.in_features for m in all_attention}  # the residual width
        layers = {n: m for n, m in candidates.items() if n in keep and id(m) not in inner
                  and (n in attention or _out_width(m) not in stream)}
    else:
        layers = {n: m for n, m in candidates.items() if any(fnmatch.fnmatchcase(n, p) for p in patterns)}
    if not layers:
        raise ValueError(
            f"No prunable layer found (patterns={patterns}). Conv2d/Linear layers in the model: "
            f"{list(candidates) or 'none'}; the last one is the classifier output and is never pruned by default."
        )
    owners = {id(p): n for n, m in attention_items(model) for p in (m.qkv, m.proj)}
    inside = {n: owners[id(m)] for n, m in layers.items() if id(m) in owners}
    if inside:
        raise ValueError(
            f"Layer(s) {list(inside)} are the qkv / proj of attention module(s) {sorted(set(inside.values()))}: their "
            f"channels are heads, and pruning them channel by channel would leave num_heads / head_dim stale. Name "
            f"the attention module(s) instead to prune whole heads.")
    for n, m in layers.items():
        if is_head_attention(m):
            head_dim(n, m)
    return layers


def attention_items(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every ViT-style attention module of ``model`` (:func:`is_head_attention`)."""
    return [(n, m) for n, m in model.named_modules() if is_head_attention(m)]


def _out_width(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def build_dependency_graph(model: nn.Module, example_input: Tensor) -> tp.DependencyGraph:
    """Trace ``model`` on ``example_input`` (eval mode, so BatchNorm statistics are untouched; grad enabled)."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            # class tokens / positional embeddings: we never prune the residual stream they live in
            warnings.filterwarnings("ignore", message=".*[Uu]nwrapped parameters.*")
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)
    finally:
        model.train(was_training)


@dataclass
class ChannelGroup:
    """Output channels that torch-pruning must remove together (e.g. every conv adding into one residual stream), or
    the heads of one ViT-style attention module.

    Attributes:
        root: name of the layer (or attention module) the group is addressed by.
        width: current number of channels (heads).
        members: scored layer name -> (root indices, that layer's channel indices), both ``(width,)`` long.
        head_dim: for a group of heads, the width of one head; None for channels.
    """

    root: str
    width: int
    members: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
    head_dim: int | None = None


def channel_groups(model: nn.Module, dg: tp.DependencyGraph, layers: Mapping[str, nn.Module]) -> list[ChannelGroup]:
    """The dependency groups whose out-channel items include at least one layer of ``layers``, then one group of
    heads per ViT-style attention module of ``layers``.

    Raises:
        ValueError: if a selected Conv2d/Linear shares its channels with a ViT-style attention module's ``qkv`` /
            ``proj`` (its heads, or the residual stream they read and write); the message names both.
    """
    attention = [(n, m) for n, m in model.named_modules() if is_head_attention(m)]
    inner = {id(m.qkv): n for n, m in attention} | {id(m.proj): n for n, m in attention}
    selected = {id(m): n for n, m in layers.items() if not is_head_attention(m)}
    output_layer = [m for m in model.modules() if isinstance(m, PRUNABLE_TYPES)][-1:]
    groups = []
    for group in dg.get_all_groups(ignored_layers=output_layer, root_module_types=PRUNABLE_TYPES):
        root_module = group[0].dep.target.module
        cg = ChannelGroup(dg._module2name[root_module], len(group[0].idxs))
        touched = None
        for item in group:
            module = item.dep.target.module
            touched = touched or inner.get(id(module))
            if id(module) in selected and dg.is_out_channel_pruning_fn(item.dep.handler):
                cg.members[selected[id(module)]] = (torch.as_tensor(item.root_idxs), torch.as_tensor(item.idxs))
        if cg.members and touched is not None:
            raise ValueError(
                f"Layer(s) {list(cg.members)} share their channels with attention module {touched!r} (its qkv / proj, "
                f"or the residual stream around it), which cannot be pruned channel by channel. Prune whole heads by "
                f"naming {touched!r} in layers, and leave its qkv / proj and the residual stream's layers out.")
        if cg.members:
            groups.append(cg)
    for name, module in layers.items():
        if is_head_attention(module):
            idx = torch.arange(module.num_heads)
            groups.append(ChannelGroup(name, module.num_heads, {name: (idx, idx)}, head_dim(name, module)))
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
    """Remove the planned output channels (and everything coupled to them) in place. A plan entry rooted at a
    ViT-style attention module lists heads: their slices of ``proj``'s input (and, coupled, of ``qkv``'s q, k and v
    outputs) are removed and ``num_heads`` is lowered; ``head_dim`` is unchanged.

    Returns:
        torch-pruning's history for these operations, ``[[layer_name, is_out_channel, indices], ...]``.
    """
    modules = dict(model.named_modules())
    start = len(dg.pruning_history())
    for root, idxs in plan.items():
        module = modules[root]
        if is_head_attention(module):
            width = head_dim(root, module)
            channels = [h * width + j for h in idxs for j in range(width)]
            dg.get_pruning_group(module.proj, tp.prune_linear_in_channels, channels).prune()
            module.num_heads -= len(idxs)
            continue
        group = dg.get_pruning_group(module, dg.get_pruner_of_module(module).prune_out_channels, list(idxs))
        group.prune()
    return [list(h) for h in dg.pruning_history()[start:]]


def pruning_record(model: nn.Module) -> dict[str, Any] | None:
    """The record of what was removed from ``model``: ``{"input_shape": [...], "history": [...]}``, or None."""
    return getattr(model, PRUNING_KEY, None)


def append_pruning_record(model: nn.Module, input_shape: Sequence[int], history: list[list[Any]]) -> None:
    record = pruning_record(model) or {"input_shape": list(input_shape), "history": []}
    record["input_shape"] = record.get("input_shape") or list(input_shape)
    record["history"] = record["history"] + history
    heads = {n: m.num_heads for n, m in model.named_modules() if is_head_attention(m)}
    if heads:
        record["num_heads"] = heads  # replay sets these after the weights shrink
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
    from lightning_edit.discedit.subset import replay_classes

    if not record:
        return False
    if not record.get("history"):
        replay_classes(model, record)
        return False
    done = (pruning_record(model) or {}).get("history", [])
    todo = record["history"][len(done):]
    if [list(map(_plain, h)) for h in done] != [list(map(_plain, h)) for h in record["history"][: len(done)]]:
        raise ValueError("This model was pruned differently from the checkpoint's pruning record; load into a fresh model.")
    if not todo:
        replay_classes(model, record)
        return False
    p = next(model.parameters())
    dg = build_dependency_graph(model, torch.zeros(record["input_shape"], device=p.device, dtype=p.dtype))
    dg.load_pruning_history([list(h) for h in todo])
    modules = dict(model.named_modules())
    for name, heads in record.get("num_heads", {}).items():
        modules[name].num_heads = heads
    append_pruning_record(model, record["input_shape"], [list(h) for h in todo])
    replay_classes(model, record)  # rows of the classifier; commutes with the channel history (columns)
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
