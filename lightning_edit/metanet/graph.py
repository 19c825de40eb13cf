"""Neural graphs (Kofinas et al., ICLR 2024; Lim et al., ICLR 2024): a network's parameters as a graph.

Nodes are neurons (MLP) or channels (CNN): the inputs, then every layer's outputs. Node value = bias
(0 for inputs). Edges are weights, from an input neuron of a layer to an output neuron; the edge value
is the weight (MLP) or the flattened kernel zero-padded to ``max_kernel × max_kernel`` (conv).
Positional ids break the symmetries that are not symmetries: every input neuron and every output
neuron has its own id; all hidden neurons of one layer share one id (hidden permutations stay a
symmetry). Each neuron also carries the id of the activation applied to it (:data:`ACTIVATIONS`), so one
metanetwork can read a population with mixed activations. Supported: sequences of ``Linear`` / ``Conv2d`` with elementwise activations, dropout,
``Flatten`` and global average/max pooling between the conv and linear parts.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch, Data

_PASSTHROUGH = (
    nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.Identity, nn.Dropout, nn.Flatten,
)
#: Activation ids of the node feature ``act``: index in this tuple (0: none / identity).
ACTIVATIONS = ("identity", "relu", "leaky_relu", "gelu", "silu", "tanh", "sigmoid", "elu")
_ACTIVATION_OF = {nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.GELU: "gelu", nn.SiLU: "silu", nn.Tanh: "tanh",
                  nn.Sigmoid: "sigmoid", nn.ELU: "elu"}


@dataclass(frozen=True)
class LayerSpec:
    """One weight layer: module name, ``"linear"`` or ``"conv"``, fan-in, fan-out, kernel size (1 for linear),
    and the activation applied to its outputs (a name in :data:`ACTIVATIONS`)."""

    name: str
    kind: str
    in_dim: int
    out_dim: int
    kernel: int = 1
    activation: str = "identity"


def architecture(model: nn.Module) -> list[LayerSpec]:
    """The weight layers of a supported network, in forward (registration) order.

    Raises:
        ValueError: for an unsupported module (named in the message), a non-square or grouped conv kernel,
            or consecutive layers whose widths do not chain.
    """
    specs: list[LayerSpec] = []
    for name, m in model.named_modules():
        if m is model or (len(list(m.children())) > 0 and isinstance(m, (nn.Sequential, nn.ModuleList))):
            continue
        if isinstance(m, nn.Linear):
            specs.append(LayerSpec(name, "linear", m.in_features, m.out_features))
        elif isinstance(m, nn.Conv2d):
            if m.groups != 1 or m.kernel_size[0] != m.kernel_size[1]:
                raise ValueError(f"Layer {name!r}: only square, ungrouped Conv2d kernels can become a neural graph.")
            specs.append(LayerSpec(name, "conv", m.in_channels, m.out_channels, m.kernel_size[0]))
        elif isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            size = m.output_size if isinstance(m.output_size, int) else m.output_size[0]
            if size != 1:
                raise ValueError(f"Layer {name!r}: only global pooling (output size 1) is supported between conv and linear layers.")
        elif type(m) in _ACTIVATION_OF and specs:
            if specs[-1].activation != "identity":
                raise ValueError(f"Layer {name!r}: two activations after {specs[-1].name!r}; a neural graph holds one per neuron.")
            specs[-1] = replace(specs[-1], activation=_ACTIVATION_OF[type(m)])
        elif not isinstance(m, _PASSTHROUGH) and not isinstance(m, (nn.Sequential, nn.ModuleList)):
            raise ValueError(
                f"Layer {name!r} ({type(m).__name__}) is not supported by the neural-graph converter; supported are "
                "Linear, Conv2d, elementwise activations, Dropout, Flatten and global pooling."
            )
    if not specs:
        raise ValueError("The network has no Linear or Conv2d layer.")
    for a, b in zip(specs, specs[1:]):
        if a.out_dim != b.in_dim:
            raise ValueError(f"Layers {a.name!r} ({a.out_dim} outputs) and {b.name!r} ({b.in_dim} inputs) do not chain.")
    return specs


@functools.lru_cache(maxsize=256)
def graph_structure(specs: tuple[LayerSpec, ...]) -> dict[str, Tensor]:
    """The value-independent part of the neural graph of an architecture, computed once per architecture:
    ``node_layer (N,)``, ``pos (N,)``, ``act (N,)``, ``edge_index (2, E)``, ``edge_layer (E,)``, ``edge_size (E,)`` (see
    :func:`to_graph`). Networks of one architecture share these tensors (do not modify them in place); only
    edge and node values differ."""
    n_in, n_out, num_layers = specs[0].in_dim, specs[-1].out_dim, len(specs)
    layers, pos = [torch.zeros(n_in, dtype=torch.long)], [torch.arange(n_in)]
    act = [torch.zeros(n_in, dtype=torch.long)] + [torch.full((s.out_dim,), ACTIVATIONS.index(s.activation)) for s in specs]
    src, dst, elayer, esize = [], [], [], []
    offset_prev, offset = 0, n_in
    for li, s in enumerate(specs, start=1):
        src.append(offset_prev + torch.arange(s.in_dim).repeat(s.out_dim))  # output-major, input-minor
        dst.append(offset + torch.arange(s.out_dim).repeat_interleave(s.in_dim))
        elayer.append(torch.full((s.in_dim * s.out_dim,), li))
        esize.append(torch.full((s.in_dim * s.out_dim,), s.kernel**2))
        layers.append(torch.full((s.out_dim,), li))
        last = li == num_layers
        pos.append(n_in + torch.arange(n_out) if last else torch.full((s.out_dim,), n_in + n_out + li - 1))
        offset_prev, offset = offset, offset + s.out_dim
    return {"node_layer": torch.cat(layers), "pos": torch.cat(pos), "act": torch.cat(act), "edge_index": torch.stack([torch.cat(src), torch.cat(dst)]),
            "edge_layer": torch.cat(elayer), "edge_size": torch.cat(esize)}


def _check_finite(model: nn.Module) -> None:
    for n, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise ValueError(f"Parameter {n!r} holds NaN or inf; a neural graph needs finite weights.")


def graph_values(model: nn.Module, specs: list[LayerSpec], k: int) -> tuple[Tensor, Tensor]:
    """Edge values ``(E, k·k)`` (weights; kernels zero-padded to ``k × k``) and node values ``(N,)`` (biases,
    0 for the inputs and for layers without bias) of ``model``, in :func:`graph_structure`'s order."""
    modules = dict(model.named_modules())
    attr, biases = [], [torch.zeros(specs[0].in_dim)]
    for s in specs:
        m = modules[s.name]
        w = m.weight.detach().float()
        if k == 1:
            attr.append(w.reshape(-1, 1))
        else:
            pad = (k - s.kernel) // 2
            w = F.pad(w.reshape(s.out_dim, s.in_dim, s.kernel, s.kernel), (pad, k - s.kernel - pad, pad, k - s.kernel - pad))
            attr.append(w.reshape(s.out_dim * s.in_dim, k * k))
        biases.append(m.bias.detach().float() if m.bias is not None else torch.zeros(s.out_dim))
    return torch.cat(attr), torch.cat(biases)


def to_graph(model: nn.Module, max_kernel: int | None = None) -> Data:
    """Convert ``model`` into a :class:`torch_geometric.data.Data` neural graph.

    Attributes of the result (N nodes, E edges, K = ``max_kernel``, L layers):
        ``bias (N,)``, ``node_layer (N,)`` (0 = input), ``pos (N,)`` positional id (see module doc), ``act (N,)``
        activation id (:data:`ACTIVATIONS`),
        ``edge_index (2, E)``, ``edge_attr (E, K·K)``, ``edge_layer (E,)`` (1-based), ``edge_size (E,)`` (weights
        per edge before padding: the layer's kernel size squared, 1 for linear layers), ``num_nodes``,
        ``num_inputs``, ``num_outputs``, ``specs`` (list of :class:`LayerSpec`).
    The structure (indices, positions, layers) is cached per architecture (:func:`graph_structure`).

    Raises:
        ValueError: see :func:`architecture`; NaN/inf parameters; a kernel larger than ``max_kernel``.
    """
    specs = architecture(model)
    k = max_kernel or max(s.kernel for s in specs)
    if max(s.kernel for s in specs) > k:
        raise ValueError(f"A kernel of size {max(s.kernel for s in specs)} exceeds max_kernel={k}.")
    _check_finite(model)
    edge_attr, bias = graph_values(model, specs, k)
    return Data(bias=bias, edge_attr=edge_attr, **graph_structure(tuple(specs)), num_nodes=len(bias),
                num_inputs=specs[0].in_dim, num_outputs=specs[-1].out_dim, specs=specs)


def to_parameters(specs: list[LayerSpec], edge_attr: Tensor, bias: Tensor, template: nn.Module) -> dict[str, Tensor]:
    """Parameters of ``template``'s architecture from per-edge values ``(E, K·K)`` and per-node values ``(N,)``.

    The inverse of :func:`to_graph` (exact). Differentiable: gradients flow back to the graph values.
    Layers without a bias in ``template`` ignore their node values.
    """
    modules = dict(template.named_modules())
    k = int(round(edge_attr.shape[1] ** 0.5))
    params: dict[str, Tensor] = {}
    e0, n0 = 0, specs[0].in_dim
    for s in specs:
        count = s.out_dim * s.in_dim
        w = edge_attr[e0 : e0 + count].reshape(s.out_dim, s.in_dim, k, k)
        pad = (k - s.kernel) // 2
        w = w[:, :, pad : pad + s.kernel, pad : pad + s.kernel]
        params[f"{s.name}.weight"] = w.reshape(modules[s.name].weight.shape)
        if modules[s.name].bias is not None:
            params[f"{s.name}.bias"] = bias[n0 : n0 + s.out_dim]
        e0, n0 = e0 + count, n0 + s.out_dim
    return params


def batch_graphs(models: list[nn.Module], max_kernel: int | None = None) -> Batch:
    """A :class:`torch_geometric.data.Batch` of the neural graphs of ``models`` (one kernel size for all)."""
    k = max_kernel or max(s.kernel for m in models for s in architecture(m))
    return Batch.from_data_list([to_graph(m, k) for m in models])
