"""A small real population: 12 MLPs trained for one epoch on UCI Adult, shared by the metanet tests."""

from __future__ import annotations

import pytest

from lightning_edit.metanet import ModelZooDataModule


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    dm = ModelZooDataModule(num_models=12, widths=[8, 16], depths=[1, 2], epochs=[1], graphs_per_batch=4,
                            root=str(tmp_path_factory.mktemp("zoo")), seed=0)
    dm.setup()
    return dm
