"""``MetanetworkEditor``: train a graph metanetwork to edit networks in one forward pass
(Kalogeropoulos, Bouritsas & Panagakis 2025; METHODS.md Sec. 3). First requirement: weight pruning."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch_geometric.data import Batch

from lightning_edit.metanet.graph import architecture, to_graph, to_parameters
from lightning_edit.metanet.model import GraphMetanetwork, MetanetOutput


def jensen_shannon(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """Mean Jensen-Shannon divergence (nats) between the softmax distributions of ``(B, K)`` logits."""
    p, q = p_logits.softmax(-1), q_logits.softmax(-1)
    m = 0.5 * (p + q)
    kl = lambda a, b: (a * (a.clamp_min(1e-12).log() - b.clamp_min(1e-12).log())).sum(-1)  # noqa: E731
    return (0.5 * kl(p, m) + 0.5 * kl(q, m)).mean()


def graph_sizes(graph: Batch) -> tuple[list[int], list[int]]:
    """Edges and nodes of each network of a batch, from its layer specs (host-side: no device sync)."""
    edges = [sum(s.in_dim * s.out_dim for s in specs) for specs in graph.specs]
    nodes = [specs[0].in_dim + sum(s.out_dim for s in specs) for specs in graph.specs]
    return edges, nodes


@dataclass
class WeightPruning:
    """Requirement: at most ``1 - sparsity`` of the weights (edges) survive.

    Training: soft gates ``g = sigmoid(logit)`` multiply the weights; loss ``relu(mean(g) - (1 - sparsity))²``
    per network. Edit time: exactly ``round(sparsity · E)`` edges with the lowest logits are zeroed.
    """

    sparsity: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}.")

    def soft_gates(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits)

    def loss(self, gates: Tensor) -> Tensor:
        return torch.relu(gates.mean() - (1.0 - self.sparsity)) ** 2

    def hard_gates(self, logits: Tensor) -> Tensor:
        k = int(round(self.sparsity * len(logits)))
        keep = torch.ones_like(logits)
        if k:
            keep[torch.argsort(logits)[:k]] = 0.0
        return keep


class MetanetworkEditor(L.LightningModule):
    """Trains a :class:`GraphMetanetwork` over a population of networks (:class:`ModelZooDataModule`).

    Loss per network: ``requirement(θ') + λ · JSD(f_θ, f_θ')`` on a batch of data, with
    ``θ' = (θ + Δθ) · gates`` evaluated functionally so that gradients reach the metanetwork.
    Logged: ``train/requirement``, ``train/jsd``, ``val/accuracy`` and ``val/sparsity`` of the exactly
    edited validation networks, ``val/accuracy_original``.

    Args:
        sparsity: weight-pruning target in [0, 1).
        lam: weight λ of the function-preservation term.
        hidden, num_layers, num_positions, max_layers: see :class:`GraphMetanetwork`.
        lr: Adam learning rate.
        requirement_weight: weight of the requirement term.

    Raises:
        ValueError: for a sparsity outside [0, 1) or a negative λ.
    """

    def __init__(self, sparsity: float = 0.5, lam: float = 1.0, hidden: int = 64, num_layers: int = 3,
                 num_positions: int = 256, max_layers: int = 8, lr: float = 1e-3, requirement_weight: float = 10.0) -> None:
        super().__init__()
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}.")
        self.save_hyperparameters()
        self.requirement = WeightPruning(sparsity)
        self.metanet = GraphMetanetwork(1, num_positions, max_layers, hidden, num_layers)
        self.num_inputs: int | None = None

    # ------------------------------------------------------------------ core
    def edited_parameters(self, graph: Batch, out: MetanetOutput, templates: list[nn.Module], hard: bool) -> list[dict[str, Tensor]]:
        """Per network, the edited parameters (soft gates in training, exact gates when ``hard``)."""
        params = []
        edge_counts, node_counts = graph_sizes(graph)
        edges = zip(graph.edge_attr.split(edge_counts), out.delta_edge.split(edge_counts), out.edge_gate.split(edge_counts))
        nodes = zip(graph.bias.split(node_counts), out.delta_node.split(node_counts))
        for template, (w, dw, logit), (b, db) in zip(templates, edges, nodes):
            gate = self.requirement.hard_gates(logit) if hard else self.requirement.soft_gates(logit)
            params.append(to_parameters(architecture(template), (w + dw) * gate[:, None], b + db, template))
        return params

    def _templates(self, graph: Batch) -> list[nn.Module]:
        return [self.trainer.datamodule.models[int(i)] for i in graph.net_id]

    def _check_inputs(self, graph: Batch) -> None:
        widths = {specs[0].in_dim for specs in graph.specs}
        if self.num_inputs is None:
            self.num_inputs = widths.pop() if len(widths) == 1 else None
        if self.num_inputs is not None and widths - {self.num_inputs}:
            raise ValueError(f"Network input width {widths} differs from the editor's {self.num_inputs}.")

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        graph, (x, _, _) = batch["nets"], batch["data"]
        self._check_inputs(graph)
        out = self.metanet(graph)
        templates = self._templates(graph)
        params = self.edited_parameters(graph, out, templates, hard=False)
        edge_counts, _ = graph_sizes(graph)
        req = torch.stack([self.requirement.loss(torch.sigmoid(g)) for g in out.edge_gate.split(edge_counts)]).mean()
        jsd = torch.stack([
            jensen_shannon(t(x).detach(), functional_call(t, p, (x,))) for t, p in zip(templates, params)
        ]).mean()
        loss = self.hparams.requirement_weight * req + self.hparams.lam * jsd
        self.log_dict({"train/requirement": req, "train/jsd": jsd, "train/loss": loss}, prog_bar=True, batch_size=len(templates))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        graph, (x, y, _) = batch["nets"], batch["data"]
        templates = self._templates(graph)
        params = self.edited_parameters(graph, self.metanet(graph), templates, hard=True)
        acc = torch.stack([(functional_call(t, p, (x,)).argmax(-1) == y).float().mean() for t, p in zip(templates, params)])
        acc0 = torch.stack([(t(x).argmax(-1) == y).float().mean() for t in templates])
        sparsity = torch.stack([
            torch.cat([p[f"{s.name}.weight"].flatten() for s in architecture(t)]).eq(0).float().mean()
            for t, p in zip(templates, params)
        ])
        self.log_dict({"val/accuracy": acc.mean(), "val/accuracy_original": acc0.mean(), "val/sparsity": sparsity.mean()},
                      prog_bar=True, batch_size=len(templates))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.metanet.parameters(), lr=self.hparams.lr)

    # ------------------------------------------------------------------ one-pass editing
    @torch.no_grad()
    def edit(self, model: nn.Module) -> nn.Module:
        """An edited copy of ``model`` (any network the converter supports, seen in training or not), in one
        forward pass of the metanetwork, with the requirement enforced exactly.

        Raises:
            ValueError: unsupported layers (named), NaN/inf parameters, an input width other than the editor's.
        """
        graph = Batch.from_data_list([to_graph(model)]).to(self.device)
        if self.num_inputs is not None and graph.num_inputs.item() != self.num_inputs:
            raise ValueError(f"The network has {graph.num_inputs.item()} inputs; this editor was trained on {self.num_inputs}.")
        was_training = self.metanet.training
        self.metanet.eval()
        params = self.edited_parameters(graph, self.metanet(graph), [model], hard=True)[0]
        self.metanet.train(was_training)
        edited = copy.deepcopy(model)
        for name, value in params.items():
            edited.get_parameter(name).copy_(value)
        return edited

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["num_inputs"] = self.num_inputs

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.num_inputs = checkpoint.get("num_inputs")
