"""A small real population: 12 MLPs trained for one epoch on UCI Adult, shared by the metanet tests."""

from __future__ import annotations

import pytest

from lightning_edit.data import AdultDataModule
from lightning_edit.metanet import ModelZooDataModule


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    dm = ModelZooDataModule(num_models=12, widths=[8, 16], depths=[1, 2], epochs=[1], graphs_per_batch=4,
                            root=str(tmp_path_factory.mktemp("zoo")), seed=0)
    dm.setup()
    return dm


@pytest.fixture(scope="session")
def zoo_large_batches(zoo):
    """The same population with 1,024 data rows per step (about 30 positives of the smaller group, against 8 at
    256), which the fairness surrogate needs."""
    dm = ModelZooDataModule(num_models=12, widths=[8, 16], depths=[1, 2], epochs=[1], graphs_per_batch=4,
                            root=str(zoo.root), seed=0, data=AdultDataModule(batch_size=1024))
    dm.setup()
    return dm
