from __future__ import annotations

import functools

import lightning as L
import pytest
import torch

from lightning_edit import ClassifierModule
from lightning_edit.data import DigitsDataModule
from lightning_edit.models import SmallCNN


@pytest.fixture
def digits() -> DigitsDataModule:
    return DigitsDataModule(batch_size=64)


def make_module(model: torch.nn.Module | None = None, lr: float = 3e-3) -> ClassifierModule:
    return ClassifierModule(model or SmallCNN(1, 10, widths=(16, 32), hidden=32), num_classes=10,
                            optimizer=lambda p: torch.optim.Adam(p, lr=lr))


def make_trainer(tmp_path, callbacks=(), max_epochs: int = 2, **kw) -> L.Trainer:
    defaults = dict(
        max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
        num_sanity_val_steps=0,
    )
    defaults.update(kw)
    return L.Trainer(callbacks=list(callbacks), **defaults)


@pytest.fixture(scope="session")
def trained_digits() -> tuple[ClassifierModule, DigitsDataModule]:
    """A SmallCNN trained 8 epochs on the real 8x8 digits (about 97% test accuracy), shared read-only by tests."""
    L.seed_everything(0)
    dm = DigitsDataModule()
    dm.setup()
    module = ClassifierModule(SmallCNN(1, 10), optimizer=functools.partial(torch.optim.Adam, lr=3e-3))
    L.Trainer(max_epochs=8, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, accelerator="cpu").fit(module, dm)
    return module.eval(), dm


class _Block(torch.nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        nn = torch.nn
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.short = (nn.Identity() if cin == cout and stride == 1
                      else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x):
        relu = torch.nn.functional.relu
        return relu(self.bn2(self.conv2(relu(self.bn1(self.conv1(x))))) + self.short(x))


class ResCNN(torch.nn.Module):
    """A user's own residual CNN with BatchNorm (not a package model): stem, 3 residual blocks, pool, linear head."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.b1, self.b2, self.b3 = _Block(16, 16), _Block(16, 32, 2), _Block(32, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(self.b3(self.b2(self.b1(self.stem(x)))), 1).flatten(1))


class Encoder(torch.nn.Module):
    """A user's nn.TransformerEncoder classifier: rows of an 8x8 digit as 8 tokens, 2 layers, 4 heads, mean pooling."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        nn = torch.nn
        self.embed = nn.Linear(8, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x[:, 0])).mean(1))


@pytest.fixture(scope="session")
def trained_residual_digits() -> tuple[ClassifierModule, DigitsDataModule]:
    """:class:`ResCNN` trained 10 epochs on the real 8x8 digits (about 97% test accuracy), shared read-only."""
    L.seed_everything(0)
    dm = DigitsDataModule()
    dm.setup()
    module = ClassifierModule(ResCNN(), optimizer=functools.partial(torch.optim.Adam, lr=3e-3))
    L.Trainer(max_epochs=10, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, accelerator="cpu").fit(module, dm)
    return module.eval(), dm


class DestroyProcessGroup(L.Callback):
    """Tear the gloo process group down on every rank once the run is over.

    Lightning destroys only NCCL groups (at exit). A gloo group left to the interpreter's exit is torn down while
    the other rank may still be talking to it, which aborted a spawned rank in CI once ("terminate called without
    an active exception", SIGABRT) after the run itself had finished.
    """

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


@pytest.fixture
def fresh_ddp_env(monkeypatch) -> DestroyProcessGroup:
    """Let each ddp_spawn run pick its own rendezvous port (a previous run leaves MASTER_PORT set).

    Returns a callback to add to the Trainer so that every rank destroys its process group before it exits.
    """
    for key in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(key, raising=False)
    return DestroyProcessGroup()
