"""Graph metanetworks as editors (Kalogeropoulos, Bouritsas & Panagakis 2025): neural graphs, the
metanetwork, a network population, and the ``MetanetworkEditor`` LightningModule."""

from lightning_edit.metanet.editor import MetanetworkEditor, WeightPruning, jensen_shannon
from lightning_edit.metanet.graph import LayerSpec, architecture, batch_graphs, to_graph, to_parameters
from lightning_edit.metanet.model import EdgeNodeLayer, GraphMetanetwork, MetanetOutput
from lightning_edit.metanet.population import ModelZooDataModule, NetworkDataset, make_mlp

__all__ = [
    "MetanetworkEditor", "WeightPruning", "jensen_shannon", "LayerSpec", "architecture", "batch_graphs", "to_graph",
    "to_parameters", "EdgeNodeLayer", "GraphMetanetwork", "MetanetOutput", "ModelZooDataModule", "NetworkDataset",
    "make_mlp",
]
