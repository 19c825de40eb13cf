"""Transformer encoders under DISCEDIT-SP: whole heads of a user's ViT-style attention (fused qkv, num_heads) and FFN
neurons, through the functional API and the Trainer callback (reload, resume, bf16-mixed, 2-process DDP); native
nn.MultiheadAttention keeps its heads and loses head width, as documented."""

from __future__ import annotations

import copy
import functools

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lightning_edit import ClassifierModule
from lightning_edit.callbacks import DiscEditPruning
from lightning_edit.data import DigitsDataModule
from lightning_edit.discedit import channel_scores, prunable_layers, prune_channels
from lightning_edit.discedit.structured import attention_shapes, enable_edit_reload, pruning_record
from lightning_edit.models import ViT
from tests.conftest import Encoder, make_trainer


class UserAttention(nn.Module):
    """A user's own attention block in timm's style (not the package's models.ViT)."""

    def __init__(self, dim: int = 32, num_heads: int = 4):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        n, t, _ = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * self.head_dim ** -0.5).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(n, t, self.num_heads * self.head_dim))


class UserViT(nn.Module):
    """8x8 digits as 4 patches of 4x4 plus a class token; two pre-norm blocks."""

    def __init__(self, dim: int = 32, num_heads: int = 4, depth: int = 2):
        super().__init__()
        self.embed = nn.Linear(16, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 5, dim) * 0.02)
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"norm1": nn.LayerNorm(dim), "attn": UserAttention(dim, num_heads), "norm2": nn.LayerNorm(dim),
                           "fc1": nn.Linear(dim, 2 * dim), "fc2": nn.Linear(2 * dim, dim)}) for _ in range(depth))
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        patches = x.unfold(2, 4, 4).unfold(3, 4, 4).reshape(len(x), 4, 16)
        t = torch.cat([self.cls.expand(len(x), -1, -1), self.embed(patches)], 1) + self.pos
        for b in self.blocks:
            t = t + b["attn"](b["norm1"](t))
            t = t + b["fc2"](torch.nn.functional.gelu(b["fc1"](b["norm2"](t))))
        return self.head(t[:, 0])


class UserModule(L.LightningModule):
    def __init__(self, lr: float = 3e-3):
        super().__init__()
        torch.manual_seed(0)
        self.net = UserViT()
        self.lr = lr
        enable_edit_reload(self)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val_acc", (self(batch[0]).argmax(1) == batch[1]).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def heads(module: nn.Module) -> list[int]:
    return [m.num_heads for m in module.modules() if isinstance(m, UserAttention)]


def test_default_layers_are_heads_and_ffn_neurons():
    layers = prunable_layers(UserViT())
    assert list(layers) == ["blocks.0.attn", "blocks.0.fc1", "blocks.1.attn", "blocks.1.fc1"]


def test_discedit_prunes_a_dead_head_first():
    torch.manual_seed(0)
    model = UserViT().eval()
    with torch.no_grad():  # head 2 of block 0 reads zero values: its output is constant, TV bound 0
        v_rows = model.blocks[0]["attn"].qkv.weight.view(3, 4, 8, 32)[2, 2]
        v_rows.zero_()
        model.blocks[0]["attn"].qkv.bias.view(3, 4, 8)[2, 2].zero_()
    dm = DigitsDataModule(batch_size=128)
    dm.setup()
    batches = [(dm.train_set.x[:512], dm.train_set.y[:512])]
    layers = {"blocks.0.attn": model.blocks[0]["attn"]}
    scores = channel_scores(model, layers, "discedit", batches, 10)["blocks.0.attn"]
    assert scores.shape == (4,) and int(scores.argmin()) == 2
    assert scores[2] < 1e-6 and scores.sort().values[1] > 0.05
    prune_channels(model, torch.zeros(1, 1, 8, 8), {"blocks.0.attn": scores}, 0.25, layers)
    attn = model.blocks[0]["attn"]
    assert attn.num_heads == 3 and attn.qkv.out_features == 72 and attn.proj.in_features == 24
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("importance", ["discedit", "random", "l1", "tp_l2", "taylor", "lamp"])
def test_every_criterion_keeps_head_attributes_consistent(importance):
    torch.manual_seed(0)
    model = ViT(image_size=8, patch_size=4, dim=32, depth=2, num_heads=4).eval()
    enable_edit_reload(model)
    x, y = torch.randn(64, 1, 8, 8), torch.arange(64) % 10
    layers = prunable_layers(model)
    scores = channel_scores(model, layers, importance, [(x, y)], 10, example_input=x[:1])
    prune_channels(model, x[:1], scores, 0.5, layers)
    for block in model.blocks:
        assert block.attn.num_heads == 2 and block.attn.head_dim == 8 and block.fc1.out_features == 64
    fresh = enable_edit_reload(ViT(image_size=8, patch_size=4, dim=32, depth=2, num_heads=4)).eval()
    fresh.load_state_dict(model.state_dict())
    assert [b.attn.num_heads for b in fresh.blocks] == [2, 2]
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_callback_removes_heads_and_neurons_reloads_and_resumes(tmp_path, capsys):
    module = UserModule()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    cb = DiscEditPruning(sparsity=0.5, prune_epoch=0, calibration_batches=4, plot=False)
    trainer = make_trainer(tmp_path, [cb, ckpt], max_epochs=2, limit_train_batches=4, limit_val_batches=2,
                           enable_checkpointing=True)
    dm = DigitsDataModule(batch_size=64)
    trainer.fit(module, datamodule=dm)
    assert heads(module) == [2, 2]
    assert [b["fc1"].out_features for b in module.net.blocks] == [32, 32]
    assert attention_shapes(module) == {"net.blocks.0.attn": (2, 8), "net.blocks.1.attn": (2, 8)}
    assert "4 × 8" in capsys.readouterr().out  # the report prints heads × head width before and after
    x = next(iter(dm.test_dataloader()))[0]
    module.eval()
    expected = module(x)
    path = tmp_path / "ckpt" / "last.ckpt"
    reloaded = UserModule.load_from_checkpoint(path).eval()
    assert heads(reloaded) == [2, 2]
    torch.testing.assert_close(reloaded(x), expected, rtol=0, atol=0)
    resumed = UserModule()
    cb2 = DiscEditPruning(sparsity=0.5, prune_epoch=0, calibration_batches=4, plot=False)
    make_trainer(tmp_path, [cb2], max_epochs=2, limit_train_batches=4, limit_val_batches=2).fit(
        resumed, datamodule=dm, ckpt_path=path)
    resumed.eval()
    torch.testing.assert_close(resumed(x), expected, rtol=0, atol=0)
    assert cb2.events == cb.events


def test_callback_under_bf16_mixed(tmp_path):
    module = UserModule()
    cb = DiscEditPruning(sparsity=0.5, prune_epoch=0, calibration_batches=4, plot=False)
    make_trainer(tmp_path, [cb], max_epochs=2, limit_train_batches=4, limit_val_batches=2,
                 precision="bf16-mixed").fit(module, datamodule=DigitsDataModule(batch_size=64))
    assert heads(module) == [2, 2]
    assert torch.isfinite(module(torch.randn(3, 1, 8, 8))).all()


def run_ddp(tmp_path, strategy: str, devices: int, extra: tuple = ()) -> list:
    module = UserModule(lr=0.0)
    cb = DiscEditPruning(sparsity=0.5, prune_epoch=0, calibration_batches=None, calibration_source="val",
                         plot=False, evaluate=False)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_epochs=1, limit_train_batches=2,
                        callbacks=[cb, *extra], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=45))
    return pruning_record(module)["history"]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_ddp_spawn_removes_the_same_heads_and_neurons(tmp_path, fresh_ddp_env):
    single = run_ddp(tmp_path / "single", "auto", 1)
    ddp = run_ddp(tmp_path / "ddp", "ddp_spawn", 2, extra=(fresh_ddp_env,))
    assert any(name.endswith("attn.proj") for name, _, _ in single)  # heads were removed
    assert [[n, o, sorted(i)] for n, o, i in ddp] == [[n, o, sorted(i)] for n, o, i in single]


def test_native_multihead_attention_keeps_heads_and_loses_head_width(tmp_path, capsys):
    module = ClassifierModule(Encoder(), optimizer=functools.partial(torch.optim.Adam, lr=3e-3))
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    cb = DiscEditPruning(sparsity=0.5, prune_epoch=0, calibration_batches=4, plot=False)
    dm = DigitsDataModule(batch_size=64)
    make_trainer(tmp_path, [cb, ckpt], max_epochs=1, limit_train_batches=4, limit_val_batches=2,
                 enable_checkpointing=True).fit(module, datamodule=dm)
    shapes = attention_shapes(module)
    assert set(shapes.values()) == {(4, 4)}  # 4 heads of width 8 -> 4 heads of width 4: embed_dim is pruned
    assert "4 × 8" in capsys.readouterr().out
    x = next(iter(dm.test_dataloader()))[0]
    module.eval()
    reloaded = ClassifierModule.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt", model=Encoder()).eval()
    torch.testing.assert_close(reloaded(x), module(x), rtol=0, atol=0)


def test_stale_head_attributes_and_projection_names_are_errors_at_setup(tmp_path):
    module = UserModule()
    module.net.blocks[0]["attn"].num_heads = 3  # 3 heads cannot tile qkv's 96 outputs
    before = copy.deepcopy(module.state_dict())
    cb = DiscEditPruning(sparsity=0.5, prune_epoch=0, calibration_batches=4, plot=False)
    with pytest.raises(ValueError, match=r"'net.blocks.0.attn' has num_heads=3.*pass layers= without"):
        make_trainer(tmp_path, [cb], max_epochs=1, limit_train_batches=2).fit(module, datamodule=DigitsDataModule())
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in before.items())
    for pattern, match in [("net.blocks.0.attn.qkv", "Name the attention module"),
                           ("net.blocks.0.fc2", "share their channels with attention module")]:
        cb = DiscEditPruning(sparsity=0.5, prune_epoch=0, calibration_batches=4, plot=False, layers=[pattern])
        with pytest.raises(ValueError, match=match):
            make_trainer(tmp_path, [cb], max_epochs=1, limit_train_batches=2).fit(UserModule(),
                                                                                 datamodule=DigitsDataModule())


def test_unlearning_defaults_leave_heads_and_the_residual_stream_alone():
    from lightning_edit.discedit import default_unlearning_layers

    assert default_unlearning_layers(UserViT(depth=3)) == ["blocks.2.fc1"]


def test_transformer_encoder_forgets_a_class_through_the_callback_and_reloads(tmp_path):
    """DISCEDIT-U on nn.TransformerEncoder runs through the callback (it used to crash inside torch-pruning on
    MultiheadAttention's out_proj): FFN neurons of the last layer are masked, held through fine-tuning, and reload.
    Masking them alone does not forget (0.81 -> 0.63 at max_ratio=0.5: the residual stream bypasses the FFN); the
    fine-tuning epoch does. Measured, not asserted as a method property: see issue 25."""
    from lightning_edit.callbacks import DiscEditUnlearning
    from lightning_edit.discedit import default_unlearning_layers

    assert default_unlearning_layers(Encoder()) == ["encoder.layers.1.linear1"]
    L.seed_everything(0)
    module = ClassifierModule(Encoder(), optimizer=functools.partial(torch.optim.Adam, lr=3e-3))
    dm = DigitsDataModule(batch_size=64)
    make_trainer(tmp_path / "train", max_epochs=6).fit(module, datamodule=dm)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    cb = DiscEditUnlearning([3], unlearn_epoch="start", finetune_epochs=1, plot=False)
    make_trainer(tmp_path, [cb, ckpt], max_epochs=1, enable_checkpointing=True).fit(module, datamodule=dm)
    assert cb.report["forget_acc_before"] > 0.8 and cb.report["forget_acc_after_ft"] <= 0.1
    masked = cb.report["masked"]["model.encoder.layers.1.linear1"]
    assert len(masked) == 32 and torch.all(module.model.encoder.layers[1].linear1.weight[masked] == 0)
    x = dm.test_set.x
    module.eval()
    reloaded = ClassifierModule.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt", model=Encoder()).eval()
    torch.testing.assert_close(reloaded(x), module(x), rtol=0, atol=0)


def test_multihead_attention_projection_named_for_unlearning_is_a_clear_error():
    from lightning_edit.discedit import maskable_layers

    with pytest.raises(ValueError, match="belong to nn.MultiheadAttention.*linear1"):
        maskable_layers(Encoder(), ["encoder.layers.1.self_attn.out_proj"])
