"""MNIST and Fashion-MNIST from their original IDX files (LeCun et al.; Xiao et al. 2017)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lightning_edit.data.base import TensorDataModule, download

_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into an array of its declared shape and type.

    Raises:
        ValueError: if the magic number is not an IDX header or the payload size does not match the header.
    """
    path = Path(path)
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code not in _DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number).")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=_DTYPES[dtype_code], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but the file holds {data.size} values.")
    return data.reshape(shape)


class MNISTDataModule(TensorDataModule):
    """MNIST (60,000 train + 10,000 test, 1x28x28, 10 classes) read from the IDX files.

    Looks for the four files (``.gz`` or uncompressed) in ``root``, then in the system directory
    (``/usr/share/datasets/<name>``, where Debian's dataset package installs them); downloads into
    ``root`` with checksums verified only when ``download=True``.

    Args:
        root: directory for the files.
        download: fetch missing files from the official mirror.
        **kwargs: see :class:`TensorDataModule`.

    Raises:
        FileNotFoundError: at ``setup`` if the files are not found and ``download`` is False; the message
            says where it looked and how to get them.
    """

    name = "mnist"
    mirror = "https://ossci-datasets.s3.amazonaws.com/mnist/"
    md5 = {
        "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
    }
    apt_package = "mnist"

    def __init__(self, root: str = "data", download: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root, self.download = Path(root).expanduser(), download

    def _search_dirs(self) -> list[Path]:
        return [self.root / self.name, self.root, Path("/usr/share/datasets") / self.name]

    def _find(self, stem: str) -> Path | None:
        for d in self._search_dirs():
            for p in (d / f"{stem}.gz", d / stem):
                if p.is_file():
                    return p
        return None

    def prepare_data(self) -> None:
        missing = [s for s in _FILES if self._find(s) is None]
        if not missing:
            return
        if not self.download:
            raise FileNotFoundError(
                f"{type(self).__name__}: {missing} not found in {[str(d) for d in self._search_dirs()]}. "
                f"Pass download=True, or on Debian `apt-get install dataset-{self.apt_package}`."
            )
        for stem in missing:
            download(self.mirror + stem + ".gz", self.root / self.name / f"{stem}.gz", self.md5[stem])

    def load_arrays(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        self.prepare_data()
        arrays = [read_idx(self._find(s)) for s in _FILES]  # type: ignore[arg-type]
        x_tr, y_tr, x_te, y_te = (torch.from_numpy(a.copy()) for a in arrays)
        to_img = lambda x: x.unsqueeze(1).float().div_(255.0)  # noqa: E731
        return to_img(x_tr), y_tr.long(), to_img(x_te), y_te.long()


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST (Zalando; same IDX format and sizes as MNIST). See :class:`MNISTDataModule`."""

    name = "fashion-mnist"
    mirror = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    md5 = {
        "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
    }
    apt_package = "fashion-mnist"
