"""A population of small MLPs trained on a tabular dataset (Adult, German credit): the training data of a
metanetwork editor."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import CombinedLoader
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch_geometric.loader import DataLoader as GraphLoader

from lightning_edit.data.adult import AdultDataModule
from lightning_edit.data.tabular import TabularDataModule
from lightning_edit.data.base import TensorDataModule
from lightning_edit.metanet.graph import to_graph


_ACTIVATION_MODULES = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU, "leaky_relu": nn.LeakyReLU,
                       "elu": nn.ELU, "sigmoid": nn.Sigmoid}


def _activation(name: str) -> type[nn.Module]:
    if name not in _ACTIVATION_MODULES:
        raise ValueError(f"Unknown activation {name!r}; choose one of {sorted(_ACTIVATION_MODULES)}.")
    return _ACTIVATION_MODULES[name]


def make_mlp(in_dim: int, hidden: list[int], out_dim: int = 2, activation: str = "relu") -> nn.Sequential:
    """``Linear-activation`` blocks of widths ``hidden`` and a ``Linear`` output.

    Raises:
        ValueError: for an activation not in ``relu, tanh, gelu, silu, leaky_relu, elu, sigmoid``.
    """
    act = _activation(activation)
    layers: list[nn.Module] = []
    for w in hidden:
        layers += [nn.Linear(in_dim, w), act()]
        in_dim = w
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


def make_cnn(in_channels: int, widths: list[int], num_classes: int = 10, activation: str = "relu") -> nn.Sequential:
    """``Conv3x3(padding 1)-activation`` blocks of widths ``widths``, global average pooling and a ``Linear``
    classifier: a network the neural-graph converter reads (channels are nodes, 3×3 kernels are edges).

    Raises:
        ValueError: for an unknown activation (see :func:`make_mlp`) or no conv layer.
    """
    act = _activation(activation)
    if not widths:
        raise ValueError("make_cnn needs at least one conv width.")
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(in_channels, w, 3, padding=1), act()]
        in_channels = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, num_classes)]
    return nn.Sequential(*layers)


def split_tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(x, y, s)`` of a tabular split (``TensorDataset``) or ``(x, y, None)`` of an image split."""
    if hasattr(dataset, "tensors"):
        x, y, *rest = dataset.tensors
        return x, y, (rest[0] if rest else None)
    return dataset.x, dataset.y, None


class NetworkDataset(Dataset):
    """Trained networks of a population: item ``i`` is its neural graph (kernels padded to ``max_kernel``), with
    ``net_id`` (its population index)."""

    def __init__(self, models: list[nn.Module], indices: list[int], max_kernel: int | None = None) -> None:
        self.models, self.indices, self.max_kernel = models, indices, max_kernel

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        g = to_graph(self.models[self.indices[i]], self.max_kernel)
        g.net_id = torch.tensor([self.indices[i]])
        return g


class ModelZooDataModule(L.LightningDataModule):
    """Trains (or loads from its cache) a population of MLPs on a tabular dataset (``family="mlp"``), or of small
    CNNs on an image dataset (``family="cnn"``: :func:`make_cnn`, ``widths`` are channel counts, ``depths`` conv
    layers; e.g. :class:`~lightning_edit.data.DigitsDataModule`), split into train/val/test networks.

    Each network: hidden widths drawn from ``widths`` (``depth`` layers from ``depths``), an activation from
    ``activations``, a seed, and ``epochs`` drawn from ``epochs`` of Adam (``train_lr``, batches of
    ``train_batch_size``) on the training rows. Networks are split into train/val/test *networks* (``split``). Networks with a width in
    ``heldout_widths`` or a depth in ``heldout_depths`` (drawn as often as the others) are kept out of all three
    and form the ``heldout_arch_idx`` split: architectures the editor never saw, reported separately.
    The population is cached in ``root`` as tensors (``torch.save``; loaded with ``weights_only=True``) under a
    name that hashes every setting that shapes it (the networks' configurations, the data's name, width, row
    count and a digest of its training rows, the training recipe): a cache built with other data or settings
    is never reused. A progress bar shows while it trains. Batches are dicts ``{"nets": Batch of neural graphs, "data": (x, y, s)}``;
    one epoch is one pass over the networks (the data loader is cycled when it is the shorter one).
    :meth:`eval_tensors` gives the whole val/test data, on which editors evaluate each network.

    Args:
        data: the DataModule (default :class:`AdultDataModule` reading ``data_root``), e.g.
            :class:`~lightning_edit.data.GermanCreditDataModule`, or an image one for ``family="cnn"``.
        family: ``"mlp"`` or ``"cnn"``.
        num_models: population size. split: fractions of train and val networks (the rest is test).
        widths, depths, epochs, activations: the variation of the population. graphs_per_batch: networks per batch.
        heldout_widths, heldout_depths: architectures kept out of training (see above).
        root: cache directory. seed: population seed.

    Raises:
        ValueError: for an empty population or an empty split, an unknown activation or family, held-out
            widths or depths that leave no other choice or that ``widths``/``depths`` never draw, or ``data_root``
            beside ``data`` (it would not be read).
    """

    def __init__(
        self, num_models: int = 64, widths: list[int] = (16, 32, 64), depths: list[int] = (1, 2),
        epochs: list[int] = (1, 2, 3), split: tuple[float, float] = (0.7, 0.15), graphs_per_batch: int = 8,
        root: str = "data/zoo", data_root: str = "data", data: TabularDataModule | TensorDataModule | None = None, seed: int = 0,
        activations: list[str] = ("relu",), heldout_widths: list[int] = (), heldout_depths: list[int] = (),
        family: str = "mlp", train_lr: float = 1e-3, train_batch_size: int = 256,
    ) -> None:
        super().__init__()
        if family not in ("mlp", "cnn"):
            raise ValueError(f"family must be 'mlp' or 'cnn', got {family!r}.")
        if train_lr <= 0 or train_batch_size < 1:
            raise ValueError(f"train_lr must be > 0 and train_batch_size >= 1, got {train_lr} and {train_batch_size}.")
        self.family, self.train_lr, self.train_batch_size = family, train_lr, train_batch_size
        if num_models < 1:
            raise ValueError("The population is empty: num_models must be >= 1.")
        unknown = sorted(set(activations) - set(_ACTIVATION_MODULES))
        if unknown:
            raise ValueError(f"Unknown activations {unknown}; choose from {sorted(_ACTIVATION_MODULES)}.")
        if set(widths) <= set(heldout_widths) or set(depths) <= set(heldout_depths):
            raise ValueError("heldout_widths/heldout_depths cover every width or depth: no network would be left to train on.")
        never_drawn = sorted(set(heldout_widths) - set(widths)) + sorted(set(heldout_depths) - set(depths))
        if never_drawn:
            raise ValueError(f"heldout_widths/heldout_depths name {never_drawn}, which widths={list(widths)} / "
                             f"depths={list(depths)} never draw, so nothing would be held out; add them to widths/depths.")
        if data is not None and data_root != "data":
            raise ValueError(f"data_root={data_root!r} locates the default Adult data, but data= is given and is read "
                             "instead; set the root on that DataModule, or drop data_root.")
        self.activations = list(activations)
        self.heldout_widths, self.heldout_depths = list(heldout_widths), list(heldout_depths)
        self.num_models, self.widths, self.depths, self.epochs = num_models, list(widths), list(depths), list(epochs)
        self.split, self.graphs_per_batch, self.root, self.seed = split, graphs_per_batch, Path(root), seed
        self.data = data or AdultDataModule(root=data_root)
        self.models: list[nn.Module] = []
        self.configs: list[dict[str, Any]] = []

    def _configs(self) -> list[dict[str, Any]]:
        rng = random.Random(self.seed)
        configs = []
        for _ in range(self.num_models):
            cfg = {"hidden": [rng.choice(self.widths) for _ in range(rng.choice(self.depths))],
                   "epochs": rng.choice(self.epochs), "seed": rng.randrange(2**31)}
            if self.activations != ["relu"]:  # the key of an all-ReLU population is unchanged
                cfg["activation"] = rng.choice(self.activations)
            configs.append(cfg)
        return configs

    def is_heldout_architecture(self, cfg: dict[str, Any]) -> bool:
        """Whether a network configuration has a held-out depth or width (it then joins ``heldout_arch_idx``)."""
        return len(cfg["hidden"]) in self.heldout_depths or any(w in self.heldout_widths for w in cfg["hidden"])

    def cache_path(self) -> Path:
        x, y, _ = split_tensors(self.data.train_set)
        digest = hashlib.sha1(x.contiguous().numpy().tobytes() + y.contiguous().numpy().tobytes()).hexdigest()[:12]
        recipe = {"optimizer": "adam", "lr": self.train_lr, "batch_size": self.train_batch_size, "data": type(self.data).__name__,
                  "rows": len(y), "train_digest": digest}
        if self.family != "mlp":
            recipe["family"] = self.family
        key = json.dumps([self._configs(), self.input_width, recipe], sort_keys=True)
        name = getattr(self.data, "name", "") or type(self.data).__name__.lower().replace("datamodule", "")
        return self.root / f"{name}_{self.family}s_{hashlib.sha1(key.encode()).hexdigest()[:12]}.pt"

    @property
    def input_width(self) -> int:
        """Input features (MLP) or input channels (CNN) of every network."""
        return self.data.num_features if self.family == "mlp" else int(self.data.train_set.x.shape[1])

    @property
    def max_kernel(self) -> int:
        """Kernel size of the population's neural graphs (1 for MLPs, 3 for :func:`make_cnn`)."""
        return 1 if self.family == "mlp" else 3

    def build(self, cfg: dict[str, Any]) -> nn.Module:
        """An untrained network of configuration ``cfg``."""
        act = cfg.get("activation", "relu")
        if self.family == "mlp":
            return make_mlp(self.input_width, cfg["hidden"], activation=act)
        return make_cnn(self.input_width, cfg["hidden"], int(self.data.num_classes), activation=act)

    def setup(self, stage: str | None = None) -> None:
        if self.models:
            return
        self.data.setup()
        self.configs = self._configs()
        path = self.cache_path()
        if path.is_file():
            states = torch.load(path, weights_only=True)["states"]
        else:
            states = self._train_population()
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"configs": self.configs, "states": states}, path)
        self.models = []
        for cfg, state in zip(self.configs, states):
            m = self.build(cfg)
            m.load_state_dict(state)
            self.models.append(m.eval())
        order = torch.randperm(self.num_models, generator=torch.Generator().manual_seed(self.seed)).tolist()
        self.heldout_arch_idx = [i for i in order if self.is_heldout_architecture(self.configs[i])]
        order = [i for i in order if not self.is_heldout_architecture(self.configs[i])]
        n_train = max(1, int(self.split[0] * len(order)))
        n_val = int(self.split[1] * len(order))
        self.train_idx, self.val_idx, self.test_idx = order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]
        if not self.val_idx or not self.test_idx:
            raise ValueError(f"{len(order)} networks (of {self.num_models}, after the held-out architectures) leave an "
                             "empty val or test split; train a larger population.")

    def _train_population(self) -> list[dict[str, torch.Tensor]]:
        from rich.progress import Progress

        x, y, _ = split_tensors(self.data.train_set)
        states = []
        with Progress(transient=True) as progress:
            task = progress.add_task("Training the network population", total=self.num_models)
            for cfg in self.configs:
                g = torch.Generator().manual_seed(cfg["seed"])
                torch.manual_seed(cfg["seed"])
                model = self.build(cfg)
                opt = torch.optim.Adam(model.parameters(), lr=self.train_lr)
                for _ in range(cfg["epochs"]):
                    for idx in torch.randperm(len(y), generator=g).split(self.train_batch_size):
                        opt.zero_grad()
                        F.cross_entropy(model(x[idx]), y[idx]).backward()
                        opt.step()
                states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
                progress.advance(task)
        return states

    def _loader(self, indices: list[int], shuffle: bool, data: DataLoader) -> CombinedLoader:
        nets = GraphLoader(NetworkDataset(self.models, indices, self.max_kernel), batch_size=self.graphs_per_batch,
                           shuffle=shuffle)
        # One epoch = one pass over the networks; each step also draws a fresh batch of data rows.
        mode = "min_size" if len(data) >= len(nets) else "max_size_cycle"
        return CombinedLoader({"nets": nets, "data": data}, mode=mode)

    def eval_tensors(self, stage: str) -> tuple[torch.Tensor, ...]:
        """The whole ``(x, y, s)`` of the data's ``"val"`` or ``"test"`` split (``(x, y)`` for image data)."""
        x, y, s = split_tensors(self.data.val_set if stage == "val" else self.data.test_set)
        return (x, y) if s is None else (x, y, s)

    def train_dataloader(self):
        return self._loader(self.train_idx, True, self.data.train_dataloader())

    def val_dataloader(self):
        return self._loader(self.val_idx, False, self.data.val_dataloader())

    def test_dataloader(self):
        return self._loader(self.test_idx, False, self.data.test_dataloader())
