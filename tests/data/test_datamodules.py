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


def test_train_subset_that_cannot_take_effect_is_an_error():
    with pytest.raises(ValueError, match="train_subset must be >= 1"):
        DigitsDataModule(train_subset=0)
    dm = DigitsDataModule(val_size=270, test_size=360, train_subset=2000)
    with pytest.raises(ValueError, match="train_subset=2000 exceeds the 1167 training samples"):
        dm.setup()
    dm = DigitsDataModule(val_size=270, test_size=360, train_subset=500)
    dm.setup()
    assert len(dm.train_set) == 500


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


def test_tabular_data_ships_with_the_package(tmp_path):
    """Adult and German credit load from the bundled UCI files when ``root`` holds nothing (a fresh clone)."""
    from lightning_edit.data import AdultDataModule, GermanCreditDataModule
    from lightning_edit.data.tabular import BUNDLED

    adult = AdultDataModule(root=str(tmp_path))
    adult.setup()
    assert adult._find("adult.data").parent == BUNDLED
    assert (len(adult.train_set), len(adult.val_set), len(adult.test_set)) == (30561, 2000, 16281)
    assert len(adult.feature_groups) == 14
    german = GermanCreditDataModule(root=str(tmp_path))
    german.setup()
    assert (len(german.train_set), len(german.val_set), len(german.test_set)) == (600, 200, 200)
    assert german.num_features == 61


def test_tabular_root_takes_precedence_and_bundled_copies_are_checksummed(tmp_path, monkeypatch):
    import gzip

    import lightning_edit.data.tabular as tabular
    from lightning_edit.data import GermanCreditDataModule

    text = gzip.decompress((tabular.BUNDLED / "german.data.gz").read_bytes())
    (tmp_path / "german").mkdir()
    (tmp_path / "german" / "german.data").write_bytes(text)
    assert GermanCreditDataModule(root=str(tmp_path))._find("german.data") == tmp_path / "german" / "german.data"

    corrupt = tmp_path / "bundled"
    corrupt.mkdir()
    (corrupt / "german.data.gz").write_bytes(gzip.compress(text.replace(b"A11", b"A12", 1)))
    monkeypatch.setattr(tabular, "BUNDLED", corrupt)
    with pytest.raises(RuntimeError, match="corrupt: md5"):
        GermanCreditDataModule(root=str(tmp_path / "empty")).setup()
    (corrupt / "german.data.gz").unlink()
    with pytest.raises(FileNotFoundError, match="pass download=True"):
        GermanCreditDataModule(root=str(tmp_path / "empty")).setup()
