"""A small row-token transformer encoder classifier for images.

Each image row is one token: ``(N, C, H, W) -> (N, H, C*W)``. All projections
are plain :class:`torch.nn.Linear` layers applied to 3-D tensors, so the legacy
ONNX exporter emits ``MatMul`` nodes with initializer weights, which weight-only
INT4 quantizers (e.g. ``MatMulNBits``) can rewrite.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Attention", "Block", "RowTransformer", "transformer"]


class Attention(nn.Module):
    """Multi-head softmax self-attention with explicit q/k/v/out Linear projections."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(dropout)
        self.proj_drop = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        # (N, T, D) -> (N, heads, T, head_dim); no literal batch size, so export stays dynamic.
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``bias``: added to the attention logits, broadcast to (N, heads, T, T) (e.g. -1e4 on padding)."""
        q = self._split(self.q(x)) * self.scale
        k = self._split(self.k(x))
        v = self._split(self.v(x))
        logits = q @ k.transpose(-2, -1)
        if bias is not None:
            logits = logits + bias
        attn = self.attn_drop(torch.softmax(logits, dim=-1))
        y = (attn @ v).transpose(1, 2).flatten(2)
        return self.proj_drop(self.out(y))


class Block(nn.Module):
    """Pre-LN encoder block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), bias)
        return x + self.mlp(self.norm2(x))


class RowTransformer(nn.Module):
    """Row-token transformer encoder with learned positions and mean pooling (no [CLS])."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 8,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.image_size = image_size
        self.embed = nn.Linear(in_channels * image_size, dim)
        self.pos = nn.Parameter(torch.zeros(1, image_size, dim))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio, dropout) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, C, H, W) -> (N, H, C*W): one token per image row.
        x = x.permute(0, 2, 1, 3).flatten(2)
        x = self.drop(self.embed(x) + self.pos)
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))


def transformer(
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int = 8,
    dim: int = 64,
    depth: int = 2,
    heads: int = 4,
    mlp_ratio: float = 2.0,
    dropout: float = 0.0,
) -> RowTransformer:
    """Build a :class:`RowTransformer` for square ``image_size`` x ``image_size`` inputs."""
    return RowTransformer(num_classes, in_channels, image_size, dim, depth, heads, mlp_ratio, dropout)
