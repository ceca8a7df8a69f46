"""A small BERT-style text encoder: token + position embeddings, pre-LN encoder blocks with a padding
mask, masked mean pooling, and a classification head (or none: the pooled embedding is the output).

``forward(input_ids, attention_mask)`` takes two int64 tensors ``(N, T)``, as Hugging Face encoders do.
The projections are :class:`torch.nn.Linear` on 3-D tensors, so the legacy ONNX exporter writes
``MatMul`` nodes that INT8 (``MatMulInteger``/``QLinearMatMul``) and INT4 weight-only (``MatMulNBits``)
quantizers can rewrite.
"""
from __future__ import annotations

import torch
from torch import nn

from compress.zoo.transformer import Block

__all__ = ["TextEncoder", "text_encoder"]


class TextEncoder(nn.Module):
    def __init__(self, vocab_size: int = 2000, seq_len: int = 32, num_classes: int = 4, dim: int = 128,
                 depth: int = 2, heads: int = 4, mlp_ratio: float = 2.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.zeros(1, seq_len, dim))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes) if num_classes else nn.Identity()
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.normal_(self.tok.weight, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.to(torch.float32)  # (N, T), 1 = token, 0 = padding
        x = self.drop(self.tok(input_ids) + self.pos[:, : input_ids.shape[1]])
        bias = ((1.0 - mask) * -1e4)[:, None, None, :]  # padding keys get no attention
        for block in self.blocks:
            x = block(x, bias)
        x = self.norm(x)
        pooled = (x * mask[:, :, None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        return self.head(pooled)


def text_encoder(vocab_size: int = 2000, seq_len: int = 32, num_classes: int = 4, dim: int = 128, depth: int = 2,
                 heads: int = 4, mlp_ratio: float = 2.0, dropout: float = 0.0) -> TextEncoder:
    """A :class:`TextEncoder`; ``num_classes: 0`` returns the pooled ``dim``-vector (an embedding model)."""
    return TextEncoder(vocab_size, seq_len, num_classes, dim, depth, heads, mlp_ratio, dropout)
