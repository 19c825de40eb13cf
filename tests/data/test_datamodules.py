from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from lightning_edit.data import CIFAR10DataModule, DigitsDataModule, FashionMNISTDataModule, MNISTDataModule, read_idx


def test_digits_split_is_fixed_stratified_and_normalised():
    dm = DigitsDataModule(val_size=270, test_size=360)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (1797 - 360 - 270, 270, 360)
    assert dm.train_set.x.shape[1:] == (1, 8, 8)
    assert abs(float(dm.train_set.x.mean())) < 1e-4 and abs(float(dm.train_set.x.std()) - 1) < 1e-2
    assert torch.bincount(dm.val_set.y).min() >= 26  # every class about equally present
    again = DigitsDataModule(val_size=270, test_size=360)
    again.setup()
    assert torch.equal(again.val_set.y, dm.val_set.y)


def write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_reader_round_trip_and_mnist_from_root(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "mnist"
    folder.mkdir()
    images = rng.integers(0, 256, (40, 28, 28))
    labels = np.arange(40) % 10
    for split, n in (("train", 40), ("t10k", 20)):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images[:n])
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels[:n])
    assert np.array_equal(read_idx(folder / "train-images-idx3-ubyte.gz"), images)
    dm = MNISTDataModule(root=str(tmp_path), val_size=10, batch_size=8)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (30, 10, 20)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 28, 28) and y.dtype == torch.long


def test_missing_files_error_says_how_to_get_them(tmp_path):
    dm = MNISTDataModule(root=str(tmp_path))
    dm._search_dirs = lambda: [tmp_path]  # hide a system-wide copy
    with pytest.raises(FileNotFoundError, match="download=True"):
        dm.setup()
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04"))
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad.gz")


def test_cifar10_reads_python_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("data_batch_1", 30), ("test_batch", 10)):
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(np.arange(n) % 10)}, f)
    dm = CIFAR10DataModule(root=str(tmp_path), val_size=10, batch_size=4)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (20, 10, 10)
    x, y = dm.train_set[0]
    assert x.shape == (3, 32, 32)
    assert dm.test_set[0][0].shape == (3, 32, 32)


@pytest.mark.skipif(FashionMNISTDataModule()._find("train-images-idx3-ubyte") is None,
                    reason="Fashion-MNIST IDX files not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_sizes():
    dm = FashionMNISTDataModule(val_size=5000)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55000, 5000, 10000)
    assert torch.equal(torch.bincount(dm.test_set.y), torch.full((10,), 1000))
