"""UCI Statlog German credit (Hofmann 1994): 1,000 applicants, 20 attributes, good/bad credit risk."""

from __future__ import annotations

import torch

from lightning_edit.data.tabular import TabularDataModule

# Attribute names of german.data's 20 columns (german.doc), in file order; True = numeric.
ATTRIBUTES = [
    ("checking_status", False), ("duration", True), ("credit_history", False), ("purpose", False),
    ("credit_amount", True), ("savings", False), ("employment_since", False), ("installment_rate", True),
    ("personal_status_sex", False), ("other_debtors", False), ("residence_since", True), ("property", False),
    ("age", True), ("other_installment_plans", False), ("housing", False), ("existing_credits", True),
    ("job", False), ("people_liable", True), ("telephone", False), ("foreign_worker", False),
]
FEMALE = {"A92", "A95"}  # attribute 9: A92 female divorced/separated/married, A95 female single


class GermanCreditDataModule(TabularDataModule):
    """German credit: 1,000 rows split (seeded) into train / val / test; 7 standardised numeric and 13 one-hot
    categorical attributes (61 features).

    Batches are ``(x, y, s)``: ``y`` 1 = good credit risk (label 1 in the file), 0 = bad (label 2);
    ``s`` for ``sensitive="sex"``: 1 = male (attribute 9 is A91, A93 or A94), 0 = female; for ``"age"``:
    1 = older than 25. ``feature_groups`` maps each attribute to its columns.

    Args:
        root: directory holding ``german/german.data``; if it is not there, the copy bundled with the package
            is used (no download needed). ``download=True`` fetches a missing file from UCI and checks its MD5.
        batch_size, val_size, test_size, seed: loader size, held-out rows, split seed.

    Raises:
        FileNotFoundError: at setup if the file is missing and ``download`` is False.
        ValueError: an unknown sensitive attribute, or val + test sizes leaving no training row.
    """

    name = "german"
    FILES = ("german.data",)
    MD5 = {"german.data": "6b94c2e35480e671545e52a808a8a549"}
    URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/statlog/german/"

    def __init__(self, root: str = "data", download: bool = False, batch_size: int = 128, val_size: int = 200,
                 test_size: int = 200, sensitive: str = "sex", seed: int = 0) -> None:
        if sensitive not in ("sex", "age"):
            raise ValueError(f"sensitive must be 'sex' or 'age', got {sensitive!r}.")
        if val_size + test_size >= 1000:
            raise ValueError(f"val_size + test_size = {val_size + test_size} leaves no training row of the 1,000.")
        super().__init__(root, download, batch_size, sensitive, seed)
        self.val_size, self.test_size = val_size, test_size

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.prepare_data()
        rows = [line.split() for line in self.read_text("german.data").splitlines() if line.strip()]
        bad = [i for i, r in enumerate(rows) if len(r) != 21]
        if bad:
            raise ValueError(f"german.data line {bad[0] + 1} has {len(rows[bad[0]])} fields, expected 21.")
        perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(self.seed)).tolist()
        test, val, train = (perm[: self.test_size], perm[self.test_size : self.test_size + self.val_size],
                            perm[self.test_size + self.val_size :])

        def columns(idx):
            numeric = {a: [float(rows[i][j]) for i in idx] for j, (a, n) in enumerate(ATTRIBUTES) if n}
            categorical = {a: [rows[i][j] for i in idx] for j, (a, n) in enumerate(ATTRIBUTES) if not n}
            return numeric, categorical

        encode = self.encoder(*columns(train))

        def dataset(idx):
            y = torch.tensor([rows[i][20] == "1" for i in idx], dtype=torch.long)
            if self.sensitive == "sex":
                s = torch.tensor([rows[i][8] not in FEMALE for i in idx], dtype=torch.long)
            else:
                s = torch.tensor([float(rows[i][12]) > 25 for i in idx], dtype=torch.long)
            return self._dataset(encode(*columns(idx)), y, s)

        self.train_set, self.val_set, self.test_set = dataset(train), dataset(val), dataset(test)
