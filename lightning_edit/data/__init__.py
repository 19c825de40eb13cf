"""Real datasets as LightningDataModules: sklearn digits, (Fashion-)MNIST IDX files, CIFAR-10 python batches, UCI Adult, German credit."""

from lightning_edit.data.adult import AdultDataModule
from lightning_edit.data.base import TensorDataModule
from lightning_edit.data.cifar import CIFAR10DataModule
from lightning_edit.data.digits import DigitsDataModule
from lightning_edit.data.german import GermanCreditDataModule
from lightning_edit.data.idx import FashionMNISTDataModule, MNISTDataModule, read_idx
from lightning_edit.data.tabular import TabularDataModule

__all__ = [
    "AdultDataModule",
    "GermanCreditDataModule",
    "TabularDataModule",
    "TensorDataModule",
    "DigitsDataModule",
    "MNISTDataModule",
    "FashionMNISTDataModule",
    "CIFAR10DataModule",
    "read_idx",
]
