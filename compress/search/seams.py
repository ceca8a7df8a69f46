"""Seams: what a cut between two blocks costs when each block is timed on its own.

A block timed alone pays what the whole network pays once: the runtime call, copying its input in and its
output out, the layout reorders the runtime puts at a graph's edges (ONNX Runtime's NCHWc transform on
x86) and, for an INT8 block, a QuantizeLinear at its input and a DequantizeLinear at its output. A network
has one edge at each end; its ``n`` blocks have ``2n``. So a plain sum of block timings overcounts by one
*seam* per internal boundary, and the seam depends on the tensor that crosses it (its shape) and on
what sits either side.

A seam is measured, not fitted: a pair of adjacent blocks is timed as one model beside the two blocks
alone, in the same interleaved session, and ``seam = block_1 + block_2 - pair``. The same rule covers
FP32 and INT8 (the INT8 pair is quantized as a whole, so its inner tensor stays 8-bit like in the
network). Network latency = sum of blocks - sum of its seams.

A seam is keyed by the two blocks' kinds and the shape of the tensor between them; the representative
pair timed for a key is the first one met in the space's covering configs.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from compress.search.space import Block, Config, SearchSpace

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn


def seam_key(prev: Block, nxt: Block) -> str:
    return json.dumps({"between": [prev.kind, nxt.kind], "shape": list(nxt.input_shape)})


def seams(space: SearchSpace, config: Config) -> list[str]:
    """The seam keys of ``config``'s internal block boundaries, in order."""
    blocks = space.blocks(config) or []
    return [seam_key(a, b) for a, b in zip(blocks, blocks[1:])]


def pair_block(prev: Block, nxt: Block) -> Block:
    """The two blocks as one measurable block (the recipe chains their recipes)."""
    return Block("pair", {"callable": "compress.search.seams:chain", "kwargs": {"parts": [prev.recipe, nxt.recipe]}},
                 prev.input_shape)


def representative_pairs(space: SearchSpace, configs: list[Config]) -> dict[str, tuple[Block, Block]]:
    """For every seam key met in ``configs``, the first adjacent pair of blocks that has it."""
    out: dict[str, tuple[Block, Block]] = {}
    for c in configs:
        blocks = space.blocks(c) or []
        for a, b in zip(blocks, blocks[1:]):
            out.setdefault(seam_key(a, b), (a, b))
    return out


def chain(parts: list[dict[str, Any]]) -> "nn.Module":
    """Artifact recipe: the modules of ``parts`` (block recipes) run one after the other."""
    from torch import nn

    from compress.artifact import import_callable

    return nn.Sequential(*[import_callable(p["callable"])(**p["kwargs"]) for p in parts])
