"""scikit-learn's bundled 8x8 handwritten digits (UCI ML hand-written digits, 1,797 images, 10 classes)."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_edit.data.base import TensorDataModule


class DigitsDataModule(TensorDataModule):
    """The 8x8 digits, no download needed.

    A fixed stratified split: ``test_size`` images for test, ``val_size`` of the rest for validation.
    Images are ``(1, 8, 8)`` float32 (pixel values 0..16 scaled to [0, 1], then standardised),
    labels int64 in 0..9.

    Args:
        test_size: images held out for test (stratified, fixed seed).
        **kwargs: see :class:`TensorDataModule` (``val_size`` defaults to 270 here).
    """

    def __init__(self, batch_size: int = 64, val_size: int = 270, test_size: int = 360, **kwargs) -> None:
        super().__init__(batch_size=batch_size, val_size=val_size, **kwargs)
        self.test_size = test_size

    def load_arrays(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(d.target, dtype=torch.long)
        idx_tr, idx_te = train_test_split(
            torch.arange(len(y)).numpy(), test_size=self.test_size, stratify=y.numpy(), random_state=self.seed
        )
        return x[idx_tr], y[idx_tr], x[idx_te], y[idx_te]
