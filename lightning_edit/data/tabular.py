"""Shared parts of the tabular DataModules (UCI Adult, Statlog German credit): file lookup (``root``, then the
copies bundled with the package), one-hot encoding with ``feature_groups``, and ``(x, y, s)`` loaders."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_edit.data.base import download

BUNDLED = Path(__file__).resolve().parent / "uci"
"""The original UCI files, gzip-compressed, shipped as package data (CC BY 4.0; see ``uci/README.md``)."""


class TabularDataModule(L.LightningDataModule):
    """Base of the tabular datamodules. Batches are ``(x, y, s)``: ``x (N, F)`` float32 features (numeric
    columns standardised with training statistics, categorical ones one-hot), ``y (N,)`` int64 binary label,
    ``s (N,)`` int64 sensitive attribute. ``feature_groups`` maps each original attribute to its columns.

    Files are looked up in ``root/<name>/``, then ``root/``, then among the copies bundled with the package
    (``lightning_edit/data/uci/*.gz``), so a fresh install works offline. Bundled and downloaded files are
    checked against ``MD5`` (the sums of the original UCI files).

    Subclasses set ``name`` (the folder under ``root``), ``FILES``, ``MD5``, ``URL`` and implement ``setup``.

    Raises:
        FileNotFoundError: at ``prepare_data``/``setup`` if a file is in none of those places and ``download``
            is False.
        RuntimeError: if a bundled or downloaded file does not match its MD5 sum.
    """

    name = ""
    FILES: tuple[str, ...] = ()
    MD5: dict[str, str] = {}
    URL = ""

    def __init__(self, root: str = "data", download: bool = False, batch_size: int = 256, sensitive: str = "sex",
                 seed: int = 0) -> None:
        super().__init__()
        self.root, self.download, self.batch_size = Path(root).expanduser(), download, batch_size
        self.sensitive, self.seed = sensitive, seed
        self.feature_groups: dict[str, list[int]] = {}
        self.levels: dict[str, list[str]] = {}
        self.train_set = self.val_set = self.test_set = None

    def _find(self, file: str) -> Path | None:
        """The file in ``root/<name>``, ``root`` or the bundled copies (``<file>.gz``); None if in none."""
        for path in (self.root / self.name / file, self.root / file, BUNDLED / f"{file}.gz"):
            if path.is_file():
                return path
        return None

    def read_text(self, file: str) -> str:
        """The text of ``file`` (decompressed and MD5-checked when it is a bundled copy).

        Raises:
            FileNotFoundError: if the file is nowhere (see :meth:`prepare_data`).
            RuntimeError: if a bundled copy does not match its MD5 sum.
        """
        path = self._find(file)
        if path is None:
            self.prepare_data()
            path = self._find(file)
        if path.parent == BUNDLED:
            data = gzip.decompress(path.read_bytes())
            digest = hashlib.md5(data).hexdigest()
            if file in self.MD5 and digest != self.MD5[file]:
                raise RuntimeError(f"The bundled {path} is corrupt: md5 {digest}, expected {self.MD5[file]}; "
                                   "reinstall lightning-edit or pass root= a folder holding the UCI file.")
            return data.decode("utf-8")
        return path.read_text()

    def prepare_data(self) -> None:
        for file in self.FILES:
            if self._find(file) is None:
                if not self.download:
                    raise FileNotFoundError(
                        f"{file} not found in {self.root / self.name}, {self.root} or the package's bundled copies "
                        f"({BUNDLED}); pass download=True or copy the UCI file there.")
                download(self.URL + file, self.root / self.name / file, md5=self.MD5.get(file))

    @property
    def num_features(self) -> int:
        return sum(len(v) for v in self.feature_groups.values())

    def encoder(self, numeric: dict[str, list[float]], categorical: dict[str, list[str]]):
        """Fit the encoding on the training columns; returns ``encode(numeric, categorical) -> x (N, F)`` and
        fills ``feature_groups`` and ``levels``."""
        num = torch.tensor(list(numeric.values()), dtype=torch.float32).T
        mean, std = num.mean(0), num.std(0).clamp_min(1e-6)
        self.levels = {c: sorted(set(v)) for c, v in categorical.items()}
        start, self.feature_groups = 0, {}
        for c in numeric:
            self.feature_groups[c] = [start]
            start += 1
        for c, lv in self.levels.items():
            self.feature_groups[c] = list(range(start, start + len(lv)))
            start += len(lv)

        def encode(numeric: dict[str, list[float]], categorical: dict[str, list[str]]) -> Tensor:
            cols = [(torch.tensor(list(numeric.values()), dtype=torch.float32).T - mean) / std]
            for c, values in categorical.items():
                index = {v: i for i, v in enumerate(self.levels[c])}
                idx = torch.tensor([index.get(v, -1) for v in values])
                oh = torch.zeros(len(values), len(self.levels[c]))
                ok = idx >= 0
                oh[ok.nonzero().flatten(), idx[ok]] = 1.0
                cols.append(oh)
            return torch.cat(cols, 1)

        return encode

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.batch_size)

    @staticmethod
    def _dataset(x: Tensor, y: Tensor, s: Tensor, idx: Tensor | None = None) -> TensorDataset:
        return TensorDataset(x, y, s) if idx is None else TensorDataset(x[idx], y[idx], s[idx])
