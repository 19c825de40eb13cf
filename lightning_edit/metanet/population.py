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
from lightning_edit.metanet.graph import to_graph


_ACTIVATION_MODULES = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU, "leaky_relu": nn.LeakyReLU,
                       "elu": nn.ELU, "sigmoid": nn.Sigmoid}


def make_mlp(in_dim: int, hidden: list[int], out_dim: int = 2, activation: str = "relu") -> nn.Sequential:
    """``Linear-activation`` blocks of widths ``hidden`` and a ``Linear`` output.

    Raises:
        ValueError: for an activation not in ``relu, tanh, gelu, silu, leaky_relu, elu, sigmoid``.
    """
    if activation not in _ACTIVATION_MODULES:
        raise ValueError(f"Unknown activation {activation!r}; choose one of {sorted(_ACTIVATION_MODULES)}.")
    layers: list[nn.Module] = []
    for w in hidden:
        layers += [nn.Linear(in_dim, w), _ACTIVATION_MODULES[activation]()]
        in_dim = w
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class NetworkDataset(Dataset):
    """Trained networks of a population: item ``i`` is its neural graph, with ``net_id`` (its population index)."""

    def __init__(self, models: list[nn.Module], indices: list[int]) -> None:
        self.models, self.indices = models, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        g = to_graph(self.models[self.indices[i]])
        g.net_id = torch.tensor([self.indices[i]])
        return g


class ModelZooDataModule(L.LightningDataModule):
    """Trains (or loads from its cache) a population of MLPs on a tabular dataset, split into train/val/test networks.

    Each network: hidden widths drawn from ``widths`` (``depth`` layers from ``depths``), an activation from
    ``activations``, a seed, and ``epochs`` drawn from ``epochs`` of Adam (lr 1e-3, batch 256) on the training
    rows. Networks are split into train/val/test *networks* (``split``). Networks with a width in
    ``heldout_widths`` or a depth in ``heldout_depths`` (drawn as often as the others) are kept out of all three
    and form the ``heldout_arch_idx`` split: architectures the editor never saw, reported separately.
    The population is cached in ``root`` as tensors (``torch.save``; loaded with ``weights_only=True``) under a
    name that hashes every setting that shapes it (the networks' configurations, the data's name, width, row
    count and a digest of its training rows, the training recipe): a cache built with other data or settings
    is never reused. A progress bar shows while it trains. Batches are dicts ``{"nets": Batch of neural graphs, "data": (x, y, s)}``;
    one epoch is one pass over the networks (the data loader is cycled when it is the shorter one).
    :meth:`eval_tensors` gives the whole val/test data, on which editors evaluate each network.

    Args:
        data: the tabular DataModule (default :class:`AdultDataModule` reading ``data_root``), e.g.
            :class:`~lightning_edit.data.GermanCreditDataModule`.
        num_models: population size. split: fractions of train and val networks (the rest is test).
        widths, depths, epochs, activations: the variation of the population. graphs_per_batch: networks per batch.
        heldout_widths, heldout_depths: architectures kept out of training (see above).
        root: cache directory. seed: population seed.

    Raises:
        ValueError: for an empty population or an empty split, an unknown activation, or held-out widths or
            depths that leave no other choice.
    """

    def __init__(
        self, num_models: int = 64, widths: list[int] = (16, 32, 64), depths: list[int] = (1, 2),
        epochs: list[int] = (1, 2, 3), split: tuple[float, float] = (0.7, 0.15), graphs_per_batch: int = 8,
        root: str = "data/zoo", data_root: str = "data", data: TabularDataModule | None = None, seed: int = 0,
        activations: list[str] = ("relu",), heldout_widths: list[int] = (), heldout_depths: list[int] = (),
    ) -> None:
        super().__init__()
        if num_models < 1:
            raise ValueError("The population is empty: num_models must be >= 1.")
        unknown = sorted(set(activations) - set(_ACTIVATION_MODULES))
        if unknown:
            raise ValueError(f"Unknown activations {unknown}; choose from {sorted(_ACTIVATION_MODULES)}.")
        if set(widths) <= set(heldout_widths) or set(depths) <= set(heldout_depths):
            raise ValueError("heldout_widths/heldout_depths cover every width or depth: no network would be left to train on.")
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
        return len(cfg["hidden"]) in self.heldout_depths or any(w in self.heldout_widths for w in cfg["hidden"])

    def cache_path(self) -> Path:
        x, y, _ = self.data.train_set.tensors
        digest = hashlib.sha1(x.contiguous().numpy().tobytes() + y.contiguous().numpy().tobytes()).hexdigest()[:12]
        recipe = {"optimizer": "adam", "lr": 1e-3, "batch_size": 256, "data": type(self.data).__name__,
                  "rows": len(y), "train_digest": digest}
        key = json.dumps([self._configs(), self.data.num_features, recipe], sort_keys=True)
        name = getattr(self.data, "name", "") or type(self.data).__name__.lower()
        return self.root / f"{name}_mlps_{hashlib.sha1(key.encode()).hexdigest()[:12]}.pt"

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
            m = make_mlp(self.data.num_features, cfg["hidden"], activation=cfg.get("activation", "relu"))
            m.load_state_dict(state)
            self.models.append(m.eval())
        order = torch.randperm(self.num_models, generator=torch.Generator().manual_seed(self.seed)).tolist()
        self.heldout_arch_idx = [i for i in order if self.is_heldout_architecture(self.configs[i])]
        order = [i for i in order if not self.is_heldout_architecture(self.configs[i])]
        n_train = max(1, int(self.split[0] * len(order)))
        n_val = int(self.split[1] * len(order))
        self.train_idx, self.val_idx, self.test_idx = order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]
        if not self.val_idx or not self.test_idx:
            raise ValueError(f"{self.num_models} networks leave an empty val or test split; train a larger population.")

    def _train_population(self) -> list[dict[str, torch.Tensor]]:
        from rich.progress import Progress

        x, y, _ = self.data.train_set.tensors
        states = []
        with Progress(transient=True) as progress:
            task = progress.add_task("Training the network population", total=self.num_models)
            for cfg in self.configs:
                g = torch.Generator().manual_seed(cfg["seed"])
                torch.manual_seed(cfg["seed"])
                model = make_mlp(self.data.num_features, cfg["hidden"], activation=cfg.get("activation", "relu"))
                opt = torch.optim.Adam(model.parameters(), lr=1e-3)
                for _ in range(cfg["epochs"]):
                    for idx in torch.randperm(len(y), generator=g).split(256):
                        opt.zero_grad()
                        F.cross_entropy(model(x[idx]), y[idx]).backward()
                        opt.step()
                states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
                progress.advance(task)
        return states

    def _loader(self, indices: list[int], shuffle: bool, data: DataLoader) -> CombinedLoader:
        nets = GraphLoader(NetworkDataset(self.models, indices), batch_size=self.graphs_per_batch, shuffle=shuffle)
        # One epoch = one pass over the networks; each step also draws a fresh batch of data rows.
        mode = "min_size" if len(data) >= len(nets) else "max_size_cycle"
        return CombinedLoader({"nets": nets, "data": data}, mode=mode)

    def eval_tensors(self, stage: str) -> tuple[torch.Tensor, ...]:
        """The whole ``(x, y, s)`` of the data's ``"val"`` or ``"test"`` split."""
        return (self.data.val_set if stage == "val" else self.data.test_set).tensors

    def train_dataloader(self):
        return self._loader(self.train_idx, True, self.data.train_dataloader())

    def val_dataloader(self):
        return self._loader(self.val_idx, False, self.data.val_dataloader())

    def test_dataloader(self):
        return self._loader(self.test_idx, False, self.data.test_dataloader())
