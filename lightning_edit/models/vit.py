"""A small Vision Transformer in plain torch (Dosovitskiy et al., ICLR 2021), in the common timm style: attention
with one fused ``qkv`` Linear and ``num_heads`` / ``head_dim`` attributes, pre-norm blocks, a class token."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (timm's layout).

    ``qkv`` maps ``dim`` to ``3 · num_heads · head_dim`` outputs laid out as ``(3, num_heads, head_dim)``; ``proj``
    maps ``num_heads · head_dim`` back to ``dim``. Whole heads can be removed (``num_heads`` falls, ``head_dim``
    stays): :mod:`lightning_edit.discedit.heads` keeps the attributes consistent with the weights.

    Shapes: ``(N, T, dim)`` -> ``(N, T, dim)``.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads
        self.qkv = nn.Linear(dim, 3 * self.num_heads * self.head_dim)
        self.proj = nn.Linear(self.num_heads * self.head_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, t, _ = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # (N, H, T, head_dim)
        return self.proj(out.transpose(1, 2).reshape(n, t, self.num_heads * self.head_dim))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))`` then ``x + fc2(gelu(fc1(norm2(x))))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.fc1 = nn.Linear(dim, int(dim * mlp_ratio))
        self.act = nn.GELU()
        self.fc2 = nn.Linear(int(dim * mlp_ratio), dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """A small Vision Transformer classifier.

    Args:
        image_size: input height = width (pixels); must be divisible by ``patch_size``.
        patch_size: side of the square patches (pixels).
        in_channels: input image channels.
        num_classes: number of output classes.
        dim: token (residual stream) width.
        depth: number of blocks.
        num_heads: attention heads per block; ``dim`` must be divisible by it.
        mlp_ratio: FFN hidden width ÷ ``dim``.

    Shapes:
        input ``(N, in_channels, image_size, image_size)``, output logits ``(N, num_classes)``.

    Raises:
        ValueError: for an image size not divisible by the patch size, or ``dim`` not divisible by ``num_heads``.
    """

    def __init__(self, image_size: int = 28, patch_size: int = 7, in_channels: int = 1, num_classes: int = 10,
                 dim: int = 64, depth: int = 3, num_heads: int = 4, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} is not divisible by patch_size={patch_size}.")
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}.")
        self.patch_embed = nn.Linear(in_channels * patch_size * patch_size, dim)
        self.patch_size = patch_size
        tokens = (image_size // patch_size) ** 2 + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, num_heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        p = self.patch_size
        patches = x.unfold(2, p, p).unfold(3, p, p)  # (N, C, H/p, W/p, p, p)
        patches = patches.permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)  # (N, T, C·p·p)
        tokens = self.patch_embed(patches)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])
