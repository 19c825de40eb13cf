"""UCI Adult (Census Income; Becker & Kohavi 1996): tabular features, the ``>50K`` label, sensitive attributes."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_edit.data.base import download

URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/adult/"
COLUMNS = [
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation", "relationship",
    "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country", "income",
]
NUMERIC = ["age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week"]
CATEGORICAL = [c for c in COLUMNS[:-1] if c not in NUMERIC]
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def _read(path: Path) -> list[list[str]]:
    rows = []
    with open(path, newline="") as f:
        for row in csv.reader(f, skipinitialspace=True):
            if len(row) != len(COLUMNS) or row[0].startswith("|"):
                continue
            rows.append([v.strip().rstrip(".") for v in row])
    return rows


class AdultDataModule(L.LightningDataModule):
    """Adult: 32,561 train + 16,281 test rows; 6 standardised numeric and 8 one-hot categorical attributes.

    Batches are ``(x, y, s)``: ``x (N, F)`` float32 features, ``y (N,)`` int64 income label (1 = >50K),
    ``s (N,)`` int64 sensitive attribute (``sensitive="sex"``: 1 = Male; ``"race"``: 1 = White). Missing
    values (``?``) are their own category. ``feature_groups`` maps each original attribute to its columns
    (for data minimisation).

    Args:
        root: directory holding ``adult/adult.data`` and ``adult/adult.test`` (also looked up in the
            project's ``../shared/data``); ``download=True`` fetches them from UCI.
        batch_size, val_size, seed: loader size, rows held out of the training file, split seed.

    Raises:
        FileNotFoundError: at setup if the files are missing and ``download`` is False.
        ValueError: for an unknown sensitive attribute.
    """

    def __init__(self, root: str = "data", download: bool = False, batch_size: int = 256, val_size: int = 2000,
                 sensitive: str = "sex", seed: int = 0) -> None:
        super().__init__()
        if sensitive not in ("sex", "race"):
            raise ValueError(f"sensitive must be 'sex' or 'race', got {sensitive!r}.")
        self.root, self.download, self.batch_size = Path(root).expanduser(), download, batch_size
        self.val_size, self.sensitive, self.seed = val_size, sensitive, seed
        self.feature_groups: dict[str, list[int]] = {}
        self.train_set = self.val_set = self.test_set = None

    def _find(self, name: str) -> Path | None:
        for d in (self.root / "adult", self.root, SHARED / "adult"):
            if (d / name).is_file():
                return d / name
        return None

    def prepare_data(self) -> None:
        for name in ("adult.data", "adult.test"):
            if self._find(name) is None:
                if not self.download:
                    raise FileNotFoundError(f"{name} not found in {self.root / 'adult'}; pass download=True or copy the UCI files there.")
                download(URL + name, self.root / "adult" / name, md5=None)

    @property
    def num_features(self) -> int:
        return sum(len(v) for v in self.feature_groups.values())

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.prepare_data()
        train, test = _read(self._find("adult.data")), _read(self._find("adult.test"))
        cols = {c: i for i, c in enumerate(COLUMNS)}
        start = 0
        num_train = torch.tensor([[float(r[cols[c]]) for c in NUMERIC] for r in train])
        mean, std = num_train.mean(0), num_train.std(0).clamp_min(1e-6)
        for c in NUMERIC:
            self.feature_groups[c] = [start]
            start += 1
        levels = {c: sorted({r[cols[c]] for r in train}) for c in CATEGORICAL}
        for c in CATEGORICAL:
            self.feature_groups[c] = list(range(start, start + len(levels[c])))
            start += len(levels[c])
        self.levels = levels

        def encode(rows: list[list[str]]) -> tuple[Tensor, Tensor, Tensor]:
            num = (torch.tensor([[float(r[cols[c]]) for c in NUMERIC] for r in rows]) - mean) / std
            onehots = []
            for c in CATEGORICAL:
                index = {v: i for i, v in enumerate(levels[c])}
                idx = torch.tensor([index.get(r[cols[c]], -1) for r in rows])
                oh = torch.zeros(len(rows), len(levels[c]))
                ok = idx >= 0
                oh[ok.nonzero().flatten(), idx[ok]] = 1.0
                onehots.append(oh)
            x = torch.cat([num, *onehots], 1)
            y = torch.tensor([r[cols["income"]] == ">50K" for r in rows], dtype=torch.long)
            key, positive = ("sex", "Male") if self.sensitive == "sex" else ("race", "White")
            s = torch.tensor([r[cols[key]] == positive for r in rows], dtype=torch.long)
            return x, y, s

        x, y, s = encode(train)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.seed))
        val, tr = perm[: self.val_size], perm[self.val_size :]
        self.train_set = TensorDataset(x[tr], y[tr], s[tr])
        self.val_set = TensorDataset(x[val], y[val], s[val])
        self.test_set = TensorDataset(*encode(test))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.batch_size)
