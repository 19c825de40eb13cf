"""Graph metanetworks as editors (Kalogeropoulos, Bouritsas & Panagakis 2025): neural graphs, the
metanetwork, requirements (weight pruning, data minimisation, bias mitigation), a network population,
the ``MetanetworkEditor`` LightningModule, composition, and the post-processing / fine-tuning /
retraining baselines."""

from lightning_edit.metanet.editor import MetanetworkEditor, compose, jensen_shannon, measure
from lightning_edit.metanet.graph import LayerSpec, architecture, batch_graphs, to_graph, to_parameters
from lightning_edit.metanet.model import EdgeNodeLayer, GraphMetanetwork, MetanetOutput
from lightning_edit.metanet.population import ModelZooDataModule, NetworkDataset, make_cnn, make_mlp
from lightning_edit.metanet.requirements import (
    REQUIREMENTS,
    BiasMitigation,
    DataMinimisation,
    NetworkEdit,
    Requirement,
    WeightPruning,
    fairness_differences,
    fairness_surrogate,
    make_requirement,
)

__all__ = [
    "MetanetworkEditor", "compose", "measure", "jensen_shannon", "LayerSpec", "architecture", "batch_graphs", "to_graph",
    "to_parameters", "EdgeNodeLayer", "GraphMetanetwork", "MetanetOutput", "ModelZooDataModule", "NetworkDataset",
    "make_mlp", "make_cnn", "REQUIREMENTS", "Requirement", "NetworkEdit", "WeightPruning", "DataMinimisation", "BiasMitigation",
    "fairness_differences", "fairness_surrogate", "make_requirement",
]
