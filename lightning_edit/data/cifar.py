"""CIFAR-10 (Krizhevsky 2009) from the standard python pickle batches."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_edit.data.base import TensorDataModule, download

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"


def random_crop_flip(x: Tensor, g: torch.Generator | None = None, padding: int = 4) -> Tensor:
    """Standard CIFAR augmentation on one image ``(C, H, W)``: zero-pad by ``padding``, random crop back, random flip."""
    c, h, w = x.shape
    i, j = torch.randint(0, 2 * padding + 1, (2,), generator=g).tolist()
    x = F.pad(x, (padding,) * 4)[:, i : i + h, j : j + w]
    if torch.rand((), generator=g) < 0.5:
        x = x.flip(-1)
    return x


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    return np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32), np.asarray(d[b"labels"], dtype=np.int64)


class CIFAR10DataModule(TensorDataModule):
    """CIFAR-10: 50,000 train + 10,000 test RGB 32x32 images, 10 classes, random crop + flip on train.

    Reads ``root/cifar-10-batches-py/{data_batch_1..5, test_batch}``; with ``download=True`` fetches
    and verifies (MD5) the official tarball first.

    Raises:
        FileNotFoundError: at ``setup`` if the batches are missing and ``download`` is False.
    """

    def __init__(self, root: str = "data", download: bool = False, augment: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root, self.download, self.augment = Path(root).expanduser(), download, augment

    def prepare_data(self) -> None:
        folder = self.root / FOLDER
        if (folder / "test_batch").is_file():
            return
        if not self.download:
            raise FileNotFoundError(f"CIFAR-10 batches not found in {folder}; pass download=True or extract {URL} there.")
        archive = download(URL, self.root / "cifar-10-python.tar.gz", MD5)
        with tarfile.open(archive) as tar:
            tar.extractall(self.root, filter="data")

    def train_transform(self):
        return random_crop_flip if self.augment else None

    def load_arrays(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        self.prepare_data()
        folder = self.root / FOLDER
        train = [_read_batch(folder / f"data_batch_{i}") for i in range(1, 6) if (folder / f"data_batch_{i}").is_file()]
        if not train:
            raise FileNotFoundError(f"No data_batch_* file in {folder}.")
        x_tr, y_tr = np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train])
        x_te, y_te = _read_batch(folder / "test_batch")
        to_img = lambda a: torch.from_numpy(a).float().div_(255.0)  # noqa: E731
        return to_img(x_tr), torch.from_numpy(y_tr), to_img(x_te), torch.from_numpy(y_te)
