"""UCI Adult (Census Income; Becker & Kohavi 1996): tabular features, the ``>50K`` label, sensitive attributes."""

from __future__ import annotations

import csv

import torch

from lightning_edit.data.tabular import TabularDataModule

URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/adult/"
COLUMNS = [
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation", "relationship",
    "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country", "income",
]
NUMERIC = ["age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week"]
CATEGORICAL = [c for c in COLUMNS[:-1] if c not in NUMERIC]


def _read(text: str) -> list[list[str]]:
    rows = []
    for row in csv.reader(text.splitlines(), skipinitialspace=True):
        if len(row) != len(COLUMNS) or row[0].startswith("|"):
            continue
        rows.append([v.strip().rstrip(".") for v in row])
    return rows


class AdultDataModule(TabularDataModule):
    """Adult: 32,561 train + 16,281 test rows; 6 standardised numeric and 8 one-hot categorical attributes.

    Batches are ``(x, y, s)``: ``x (N, F)`` float32 features, ``y (N,)`` int64 income label (1 = >50K),
    ``s (N,)`` int64 sensitive attribute (``sensitive="sex"``: 1 = Male; ``"race"``: 1 = White). Missing
    values (``?``) are their own category. ``feature_groups`` maps each original attribute to its columns
    (for data minimisation).

    Args:
        root: directory holding ``adult/adult.data`` and ``adult/adult.test``; if they are not there, the copies
            bundled with the package are used (no download needed). ``download=True`` fetches missing files from
            UCI and checks their MD5 sums.
        batch_size, val_size, seed: loader size, rows held out of the training file, split seed.

    Raises:
        FileNotFoundError: at setup if the files are missing and ``download`` is False.
        ValueError: for an unknown sensitive attribute.
    """

    name = "adult"
    FILES = ("adult.data", "adult.test")
    MD5 = {"adult.data": "5d7c39d7b8804f071cdd1f2a7c460872", "adult.test": "35238206dfdf7f1fe215bbb874adecdc"}
    URL = URL

    def __init__(self, root: str = "data", download: bool = False, batch_size: int = 256, val_size: int = 2000,
                 sensitive: str = "sex", seed: int = 0) -> None:
        if sensitive not in ("sex", "race"):
            raise ValueError(f"sensitive must be 'sex' or 'race', got {sensitive!r}.")
        super().__init__(root, download, batch_size, sensitive, seed)
        self.val_size = val_size

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.prepare_data()
        train, test = _read(self.read_text("adult.data")), _read(self.read_text("adult.test"))
        cols = {c: i for i, c in enumerate(COLUMNS)}
        columns = lambda rows: ({c: [float(r[cols[c]]) for r in rows] for c in NUMERIC},  # noqa: E731
                                {c: [r[cols[c]] for r in rows] for c in CATEGORICAL})
        encode = self.encoder(*columns(train))
        key, positive = ("sex", "Male") if self.sensitive == "sex" else ("race", "White")

        def dataset(rows):
            y = torch.tensor([r[cols["income"]] == ">50K" for r in rows], dtype=torch.long)
            s = torch.tensor([r[cols[key]] == positive for r in rows], dtype=torch.long)
            return encode(*columns(rows)), y, s

        x, y, s = dataset(train)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.seed))
        self.train_set = self._dataset(x, y, s, perm[self.val_size :])
        self.val_set = self._dataset(x, y, s, perm[: self.val_size])
        self.test_set = self._dataset(*dataset(test))
