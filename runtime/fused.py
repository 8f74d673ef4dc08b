"""gpt-fast's load-time fusion: an Attention's wq, wk, wv and a FeedForward's w1, w3 stacked into one matrix each,
so a decode step launches two matrix-vector products per layer fewer.

The stacked matrix is a buffer outside the state dict (`wqkv`, `w13`); the checkpoint's weights become views of its
rows, so memory stays the same and the state dict keeps its keys. The module keeps its class's forward; only its
`project` becomes one product (the class gains `StackedQKV` / `StackedGateUp`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class StackedQKV:
    """`Attention.project` as one product with `wqkv` (wq, wk, wv stacked by rows)."""

    wq: nn.Linear
    wk: nn.Linear
    wv: nn.Linear
    wqkv: torch.Tensor

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sizes = [self.wq.weight.shape[0], self.wk.weight.shape[0], self.wv.weight.shape[0]]
        q, k, v = F.linear(x, self.wqkv).split(sizes, dim=-1)
        return q, k, v


class StackedGateUp:
    """`FeedForward.project` as one product with `w13` (w1, w3 stacked by rows)."""

    w1: nn.Linear
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


def fuse_attention(attention: nn.Module) -> None:
    """Stack the model's Attention's wq, wk, wv into `wqkv` and compute its projections from it."""
    attention.register_buffer("wqkv", stack_rows(attention.wq, attention.wk, attention.wv), persistent=False)
    _mix_in(attention, StackedQKV)


def fuse_feed_forward(feed_forward: nn.Module) -> None:
    """Stack the model's FeedForward's w1 and w3 into `w13` and compute gate and up from it."""
    feed_forward.register_buffer("w13", stack_rows(feed_forward.w1, feed_forward.w3), persistent=False)
    _mix_in(feed_forward, StackedGateUp)


_MIXED: dict[tuple[type, type], type] = {}


def _mix_in(module: nn.Module, mixin: type) -> None:
    """Give `module` the class (mixin, its class): the same module, parameters and forward, `mixin`'s `project`."""
    base = type(module)
    if issubclass(base, mixin):
        return
    cls = _MIXED.get((base, mixin))
    if cls is None:
        name = mixin.__name__.removesuffix("QKV").removesuffix("GateUp") + base.__name__
        cls = _MIXED[(base, mixin)] = type(name, (mixin, base), {"__module__": __name__})
    module.__class__ = cls
