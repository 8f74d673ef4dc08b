"""gpt-fast's load-time fusion: an Attention's wq, wk, wv and a FeedForward's w1, w3 stacked into one matrix each,
so a decode step launches two matrix-vector products per layer fewer.

The stacked matrix is a buffer outside the state dict (`wqkv`, `w13`); the checkpoint's weights become views of its
rows, so memory stays the same and the state dict keeps its keys. Each module becomes its fused subclass
(`FusedAttention`, `FusedFeedForward`): the same module, parameters and forward, with `project` as one product.
The plain model (`model.py`) knows nothing of this; the loader calls `fuse_projections` on GPUs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .model import Attention, FeedForward, Transformer


class FusedAttention(Attention):
    """`Attention.project` as one product with `wqkv` (wq, wk, wv stacked by rows)."""

    wqkv: torch.Tensor

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sizes = [self.wq.weight.shape[0], self.wk.weight.shape[0], self.wv.weight.shape[0]]
        q, k, v = F.linear(x, self.wqkv).split(sizes, dim=-1)
        return q, k, v


class FusedFeedForward(FeedForward):
    """`FeedForward.project` as one product with `w13` (w1, w3 stacked by rows)."""

    w13: torch.Tensor

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate, up = F.linear(x, self.w13).chunk(2, dim=-1)
        return gate, up


def stack_rows(*linears: nn.Linear) -> torch.Tensor:
    """One weight holding the rows of each `linears` weight in order; each linear's weight becomes a view of it."""
    fused = torch.cat([lin.weight.detach() for lin in linears])
    begin = 0
    for lin in linears:
        rows = lin.weight.shape[0]
        lin.weight = nn.Parameter(fused[begin : begin + rows], requires_grad=False)
        begin += rows
    return fused


def fuse_attention(attention: Attention) -> None:
    """Stack wq, wk, wv into `wqkv` and compute the projections from it."""
    if isinstance(attention, FusedAttention):
        return
    attention.register_buffer("wqkv", stack_rows(attention.wq, attention.wk, attention.wv), persistent=False)
    attention.__class__ = FusedAttention


def fuse_feed_forward(feed_forward: FeedForward) -> None:
    """Stack w1 and w3 into `w13` and compute gate and up from it."""
    if isinstance(feed_forward, FusedFeedForward):
        return
    feed_forward.register_buffer("w13", stack_rows(feed_forward.w1, feed_forward.w3), persistent=False)
    feed_forward.__class__ = FusedFeedForward


def fuse_projections(model: Transformer) -> Transformer:
    """Fuse every layer's projections in place. Memory stays the same (the old weights become views); for weights
    memory-mapped from a file it makes a private copy, so the loader does it on GPUs only."""
    for layer in model.blocks:
        fuse_attention(layer.attention)
        if isinstance(layer.feed_forward, FeedForward):  # experts are stacked by `moe.stack_experts` instead
            fuse_feed_forward(layer.feed_forward)
    return model
