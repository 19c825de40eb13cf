"""Replay of the activations that a candidate edit cannot change, for searches that measure many candidates.

DISCEDIT-U's ratio search (:func:`~lightning_edit.discedit.mask_until_forgotten`) measures about seven candidate
masks, each with a BatchNorm re-estimation pass and an evaluation pass. The masks sit in the last third of the
network, so every module that finishes before the first masked site computes the same output for every candidate.
:class:`PrefixReplay` records those outputs once and returns them in later passes instead of computing them again:
on ResNet-20 that is two thirds of each pass's convolutions.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves, tree_map

_MISSING = object()
PREFIX_CACHE_BYTES = 512 * 2**20
"""The most memory (bytes, on the model's device) :class:`PrefixReplay` holds; a search whose prefix outputs need more
runs without replay (same results, full cost). ``lightning_edit.discedit.prefix.PREFIX_CACHE_BYTES = 0`` turns replay
off (set it on this module: the package does not re-export it)."""


def prefix_modules(model: nn.Module, sites: Sequence[nn.Module], example_input: Tensor) -> dict[str, nn.Module]:
    """The largest submodules of ``model`` that run once per forward pass and finish before any of ``sites`` starts.

    Found from one eval-mode forward pass on ``example_input`` with hooks on every submodule. A module called more
    than once (shared, or in a loop) is never included, nor is one that is still running when a site starts (an
    ancestor of a site). Their outputs cannot depend on anything done at the sites.

    Args:
        model: the network; its training mode is restored afterwards.
        sites: modules of ``model`` where an edit acts (masked layers and the BatchNorms they feed).
        example_input: ``(1, ...)`` input on the model's device.

    Returns:
        name -> module, in call order; empty when no module qualifies.
    """
    named = [(n, m) for n, m in model.named_modules() if n]
    site_ids = {id(s) for s in sites}
    clock = itertools.count()
    calls: Counter[str] = Counter()
    start: dict[str, int] = {}
    end: dict[str, int] = {}
    handles = []
    for name, module in named:
        def pre(_m, _a, name=name):
            calls[name] += 1
            start.setdefault(name, next(clock))

        def post(_m, _a, _o, name=name):
            end[name] = next(clock)

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    first_site = min((start[n] for n, m in named if id(m) in site_ids and n in start), default=None)
    if first_site is None:
        return {}
    before = {n for n in start if calls[n] == 1 and end.get(n, first_site) < first_site}
    modules = dict(named)
    chosen = [n for n in before if (n.rpartition(".")[0] or None) not in before]
    return {n: modules[n] for n in sorted(chosen, key=start.__getitem__)}


class PrefixReplay:
    """Outputs of :func:`prefix_modules` recorded per *phase* (a fixed sequence of forward passes) and replayed.

    ``with replay.record(phase): ...`` runs the passes normally and stores a copy of every prefix module's output;
    ``with replay.replay(phase): ...`` runs the same passes with each prefix module returning its stored output
    instead of computing it (a fresh copy each time, so in-place operations downstream cannot corrupt it). The
    passes must be the same, in the same order, as when recorded; a prefix module called once more than recorded
    raises. Recording stops keeping outputs once they exceed ``max_bytes``; replay is then a no-op.

    Args:
        model, sites, example_input: as :func:`prefix_modules`.
        max_bytes: memory limit in bytes (default :data:`PREFIX_CACHE_BYTES`; 0 turns replay off).

    Attributes:
        modules: the prefix modules (name -> module).
        nbytes: memory held by the recorded outputs, in bytes.

    Raises:
        RuntimeError: from :meth:`replay`, when a prefix module runs more often than it did in the recorded phase;
            the model's own ``forward`` methods are restored first.
    """

    def __init__(self, model: nn.Module, sites: Sequence[nn.Module], example_input: Tensor,
                 max_bytes: int | None = None) -> None:
        self.max_bytes = PREFIX_CACHE_BYTES if max_bytes is None else max_bytes
        self.modules = prefix_modules(model, sites, example_input) if self.max_bytes > 0 else {}
        self.nbytes = 0
        self._store: dict[str, dict[str, list[Any]]] = {}
        self._over = False

    @property
    def active(self) -> bool:
        """Whether replay takes effect (prefix modules exist and their outputs fit in ``max_bytes``)."""
        return bool(self.modules) and not self._over

    @contextmanager
    def record(self, phase: str) -> Iterator[None]:
        store: dict[str, list[Any]] = {name: [] for name in self.modules}

        def keep(name: str):
            def hook(_m, _a, out):
                if self._over:
                    return
                copy = tree_map(lambda t: t.detach().clone() if isinstance(t, Tensor) else t, out)
                self.nbytes += sum(t.numel() * t.element_size() for t in tree_leaves(copy) if isinstance(t, Tensor))
                if self.nbytes > self.max_bytes:
                    self._over = True
                    self._store.clear()
                    return
                store[name].append(copy)
            return hook

        handles = [m.register_forward_hook(keep(n)) for n, m in self.modules.items()] if self.active else []
        try:
            yield
        finally:
            for h in handles:
                h.remove()
        if self.active:
            self._store[phase] = store

    @contextmanager
    def replay(self, phase: str) -> Iterator[None]:
        if not self.active or phase not in self._store:
            yield
            return
        served = {name: iter(outputs) for name, outputs in self._store[phase].items()}

        def stored(name: str):
            def forward(*_args, **_kwargs):
                out = next(served[name], _MISSING)
                if out is _MISSING:
                    raise RuntimeError(f"PrefixReplay: {name} ran more often in phase {phase!r} than recorded; the "
                                       "passes differ from the recorded ones. Set lightning_edit.discedit.prefix."
                                       "PREFIX_CACHE_BYTES = 0 to turn replay off.")
                return tree_map(lambda t: t.clone() if isinstance(t, Tensor) else t, out)
            return forward

        own = {name: vars(module).get("forward") for name, module in self.modules.items()}  # an instance's own forward
        for name, module in self.modules.items():
            module.forward = stored(name)
        try:
            yield
        finally:
            for name, module in self.modules.items():
                if own[name] is None:
                    del module.forward
                else:
                    module.forward = own[name]
