"""Shared machinery: in-memory image datasets with a fixed train/val/test split."""

from __future__ import annotations

import hashlib
import urllib.request
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset


class ImageTensorDataset(Dataset):
    """``(x, y)`` pairs from tensors ``x: (N, C, H, W)`` float32 and ``y: (N,)`` int64, with an optional transform."""

    def __init__(self, x: Tensor, y: Tensor, transform: Callable[[Tensor, torch.Generator | None], Tensor] | None = None):
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)}.")
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x = self.x[i]
        if self.transform is not None:
            x = self.transform(x, None)
        return x, self.y[i]


class TensorDataModule(L.LightningDataModule):
    """Base DataModule for datasets that fit in memory.

    Subclasses implement :meth:`load_arrays`, returning ``(x_train, y_train, x_test, y_test)`` with images
    ``(N, C, H, W)`` float32 in [0, 1] and labels ``(N,)`` int64. This class standardises with the
    training split's per-channel mean and std, holds out ``val_size`` training samples (fixed seed,
    stratified by class) and builds the loaders.

    Args:
        batch_size: samples per batch for every loader.
        val_size: number of training samples held out for validation.
        train_subset: keep only this many training samples (stratified), for quick runs; None keeps all.
        num_workers: DataLoader workers.
        seed: seed of the split and of the subset.
        classes: keep only these class indices, e.g. to train a model without a class as the unlearning gold
            standard. None keeps all.
        relabel: with ``classes``, map labels to their position in ``classes`` (``classes[j] -> j``), the labels of
            a model specialised to the subset (``DiscEditPruning(classes=...)``). False keeps the original labels.

    Raises:
        ValueError: for a non-positive batch size or ``train_subset``, duplicate ``classes``, ``relabel`` without
            ``classes``; at setup, for a class outside the dataset's classes, a ``val_size`` that leaves no
            training data or a ``train_subset`` larger than the training samples left (it would keep them all).
    """

    num_classes: int = 10

    def __init__(
        self,
        batch_size: int = 128,
        val_size: int = 5000,
        train_subset: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        classes: list[int] | None = None,
        relabel: bool = False,
    ) -> None:
        super().__init__()
        if relabel and classes is None:
            raise ValueError("relabel=True maps labels to positions in `classes`; give classes, or drop relabel.")
        if classes is not None and len(set(classes)) != len(classes):
            raise ValueError(f"classes={classes} has duplicates.")
        self.relabel = relabel
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {val_size}.")
        if train_subset is not None and train_subset < 1:
            raise ValueError(f"train_subset must be >= 1 (or None: all training samples), got {train_subset}.")
        self.batch_size, self.val_size, self.train_subset = batch_size, val_size, train_subset
        self.num_workers, self.seed, self.classes = num_workers, seed, classes
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def load_arrays(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def train_transform(self) -> Callable[[Tensor, torch.Generator | None], Tensor] | None:
        """Augmentation applied to training samples only (None: no augmentation)."""
        return None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        x_tr, y_tr, x_te, y_te = self.load_arrays()
        if self.classes is not None:
            bad = [c for c in self.classes if not 0 <= c < self.num_classes]
            if bad:
                raise ValueError(f"classes {bad} are outside 0..{self.num_classes - 1}.")
            keep = torch.tensor(self.classes)
            m_tr, m_te = torch.isin(y_tr, keep), torch.isin(y_te, keep)
            x_tr, y_tr, x_te, y_te = x_tr[m_tr], y_tr[m_tr], x_te[m_te], y_te[m_te]
            if self.relabel:
                position = torch.full((self.num_classes,), -1, dtype=torch.long)
                position[keep] = torch.arange(len(keep))
                y_tr, y_te = position[y_tr], position[y_te]
        g = torch.Generator().manual_seed(self.seed)
        perm = _stratified_order(y_tr, g)
        if self.val_size >= len(perm):
            raise ValueError(f"val_size={self.val_size} leaves no training data ({len(perm)} samples); lower it.")
        val_idx, train_idx = perm[: self.val_size], perm[self.val_size :]
        if self.train_subset is not None:
            if self.train_subset > len(train_idx):
                raise ValueError(f"train_subset={self.train_subset} exceeds the {len(train_idx)} training samples left "
                                 f"after the {self.val_size}-sample validation split; lower it, or pass None for all.")
            train_idx = train_idx[_stratified_order(y_tr[train_idx], g)[: self.train_subset]]
        mean = x_tr[train_idx].mean(dim=(0, 2, 3), keepdim=True)[0]
        std = x_tr[train_idx].std(dim=(0, 2, 3), keepdim=True)[0].clamp_min(1e-6)
        self.mean, self.std = mean, std
        norm = lambda x: (x - mean) / std  # noqa: E731
        self.train_set = ImageTensorDataset(norm(x_tr[train_idx]), y_tr[train_idx], self.train_transform())
        self.val_set = ImageTensorDataset(norm(x_tr[val_idx]), y_tr[val_idx])
        self.test_set = ImageTensorDataset(norm(x_te), y_te)

    def _loader(self, ds: Dataset | None, shuffle: bool) -> DataLoader:
        assert ds is not None, "call setup() first"
        return DataLoader(
            ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)


def _stratified_order(y: Tensor, g: torch.Generator) -> Tensor:
    """A permutation of ``range(len(y))`` that interleaves classes, so every prefix is close to stratified."""
    perm = torch.randperm(len(y), generator=g)
    y = y[perm]
    rank_in_class = torch.zeros(len(y), dtype=torch.long)
    for c in y.unique():
        idx = (y == c).nonzero().flatten()
        rank_in_class[idx] = torch.arange(len(idx))
    frac = rank_in_class.double() / torch.bincount(y)[y].double()
    return perm[torch.argsort(frac, stable=True)]


def download(url: str, dest: Path, md5: str | None) -> Path:
    """Download ``url`` to ``dest`` and verify its MD5 checksum (skipped when ``md5`` is None).

    Raises:
        RuntimeError: if the download fails or the checksum differs (the partial file is removed).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        urllib.request.urlretrieve(url, tmp)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"Could not download {url}: {err}. Put the file in {dest.parent} by hand.") from err
    digest = hashlib.md5(tmp.read_bytes()).hexdigest()
    if md5 is not None and digest != md5:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"Checksum mismatch for {url}: expected md5 {md5}, got {digest}.")
    tmp.rename(dest)
    return dest
