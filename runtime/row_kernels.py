"""The decode step on row kernels: the plain model's decode step, with its single-row work handed to kernels such
as m7b's compiled CPU kernels (`cpu_kernels.BF16RowKernels`), at the largest grain they take: the whole token in
one call (embedding, every block, the final norm and output projection; the weights gathered once,
`step_weights.py`), and for greedy decoding several tokens a call (`RowKernelStep.greedy`); else each block in one
call (a mixture-of-experts block with its routing included); else operation by operation (products, RMSNorm,
SwiGLU, rotary + cache write + attention). The model knows nothing of them: this module drives its modules.

What the kernels do not take falls back to the model's own torch code, module by module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .generate import decode_one_token
from .model import Attention, FeedForward, RMSNorm, Transformer, TransformerBlock
from .moe import Expert, MoeFeedForward
from .step_weights import StepWeights, gather_step

# The order of a block's weights in `RowKernels.block_step` (the C ABI of m7b_block_step_bf16), as state-dict
# names inside a TransformerBlock.
BLOCK_WEIGHTS = (
    "attention.wq.weight",
    "attention.wk.weight",
    "attention.wv.weight",
    "attention.wo.weight",
    "feed_forward.w1.weight",
    "feed_forward.w3.weight",
    "feed_forward.w2.weight",
)


@dataclass(frozen=True)
class DecodePosition:
    """What one decode position's attention needs beside its q|k|v row, for the row kernels."""

    freqs: torch.Tensor  # the position's rotations (cos/sin pairs, or complex)
    k_cache: torch.Tensor  # the layer's rolling caches, (1, n_kv_heads, capacity, head_dim)
    v_cache: torch.Tensor
    slots: torch.Tensor  # the one slot this position writes
    mask: torch.Tensor  # (1, capacity): the slots it sees
    heads: tuple[int, int, int]  # n_heads, n_kv_heads, head_dim


class RowKernels(Protocol):
    """Kernels for one row (`m7b.runtime.cpu_kernels.BF16RowKernels`): each falls back to torch for inputs it
    does not take (`rms_norm`, `attention_step` and `block_step` by returning None / False)."""

    def __call__(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor: ...
    def stack(self, x: torch.Tensor, weights: tuple[torch.Tensor, ...]) -> torch.Tensor: ...
    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor | None: ...
    def swiglu(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor: ...
    def attention_step(self, qkv: torch.Tensor, position: DecodePosition) -> torch.Tensor | None: ...
    def block_step(
        self,
        x: torch.Tensor,
        norms: tuple[torch.Tensor, torch.Tensor],
        eps: float,
        weights: tuple[torch.Tensor, ...],
        position: DecodePosition,
    ) -> bool: ...
    def moe_block_step(
        self,
        x: torch.Tensor,
        norms: tuple[torch.Tensor, torch.Tensor],
        eps: float,
        attention: tuple[torch.Tensor, ...],
        gate: torch.Tensor,
        experts: tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], ...],
        per_token: int,
        position: DecodePosition,
    ) -> list[int] | None: ...
    def decode_step(self, step: StepWeights, token: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor | None: ...
    def decode_greedy(self, step: StepWeights, token: int, position: int, n: int, eos: int) -> list[int] | None: ...


def block_weights(block: TransformerBlock) -> tuple[torch.Tensor, ...]:
    """The block's weights in `BLOCK_WEIGHTS` order."""
    return tuple(block.get_parameter(name) for name in BLOCK_WEIGHTS)


def decode_position(
    attention: Attention, freqs: torch.Tensor, slots: torch.Tensor, mask: torch.Tensor
) -> DecodePosition:
    cache = attention.kv_cache
    assert cache is not None, "call Transformer.setup_caches() first"
    heads = (attention.n_heads, attention.n_kv_heads, attention.head_dim)
    return DecodePosition(freqs, cache.k_cache, cache.v_cache, slots, mask, heads)


def rms_norm_on_rows(kernels: RowKernels, norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
    y = kernels.rms_norm(x, norm.weight, norm.eps)
    return y if y is not None else norm(x)


def attention_on_rows(
    kernels: RowKernels,
    attention: Attention,
    x: torch.Tensor,
    freqs: torch.Tensor,
    mask: torch.Tensor,
    slots: torch.Tensor,
) -> torch.Tensor:
    """`attention(x, ...)` for one decode row: q|k|v in one call, then rotary, cache write and attention in one call
    (the model's `attend` when the kernel declines), wo."""
    a = attention
    qkv = kernels.stack(x, (a.wq.weight, a.wk.weight, a.wv.weight))
    y = kernels.attention_step(qkv, decode_position(a, freqs, slots, mask))
    if y is None:
        kv_size = a.n_kv_heads * a.head_dim
        q, k, v = qkv.split([a.n_heads * a.head_dim, kv_size, kv_size], dim=-1)
        y = a.attend(q, k, v, freqs, mask, slots, decode=True)
    return kernels(y.view(*x.shape[:-1], a.n_heads * a.head_dim), a.wo.weight)


def feed_forward_on_rows(
    kernels: RowKernels, feed_forward: FeedForward | MoeFeedForward | Expert, x: torch.Tensor
) -> torch.Tensor:
    """SwiGLU on the kernels; a mixture of experts routes the row and reads only the chosen experts' weights."""
    if isinstance(feed_forward, MoeFeedForward):
        logits = kernels(x, feed_forward.gate.weight)
        return feed_forward.on_rows(x, logits, lambda expert, row: feed_forward_on_rows(kernels, expert, row))
    f = feed_forward
    gate, up = kernels.stack(x, (f.w1.weight, f.w3.weight)).split([f.w1.weight.shape[0], f.w3.weight.shape[0]], -1)
    return kernels(kernels.swiglu(gate, up), f.w2.weight)


def block_in_one_call(
    kernels: RowKernels,
    block: TransformerBlock,
    x: torch.Tensor,
    freqs: torch.Tensor,
    mask: torch.Tensor,
    slots: torch.Tensor,
) -> bool:
    """The block on one decode row `x`, in place, as one `block_step` call; False, with nothing changed, when the
    kernels do not take these inputs (then call `block_on_rows`)."""
    a, attention_norm, ffn_norm = block.attention, block.attention_norm, block.ffn_norm
    if a.kv_cache is None or attention_norm.eps != ffn_norm.eps:  # the call takes one eps
        return False
    norms = (attention_norm.weight, ffn_norm.weight)
    position = decode_position(a, freqs, slots, mask)
    f = block.feed_forward
    if isinstance(f, MoeFeedForward):  # the gate, top-k, softmax and the chosen experts inside the same call
        attention = (a.wq.weight, a.wk.weight, a.wv.weight, a.wo.weight)
        gate, experts = f.row_weights()
        chosen = kernels.moe_block_step(
            x, norms, attention_norm.eps, attention, gate, experts, f.num_experts_per_tok, position
        )
        return chosen is not None
    return kernels.block_step(x, norms, attention_norm.eps, block_weights(block), position)


def block_on_rows(
    kernels: RowKernels,
    block: TransformerBlock,
    x: torch.Tensor,
    freqs: torch.Tensor,
    mask: torch.Tensor,
    slots: torch.Tensor,
) -> torch.Tensor:
    """`block(x, ...)` for one decode row, operation by operation on the kernels."""
    h = x + attention_on_rows(
        kernels, block.attention, rms_norm_on_rows(kernels, block.attention_norm, x), freqs, mask, slots
    )
    return h + feed_forward_on_rows(kernels, block.feed_forward, rms_norm_on_rows(kernels, block.ffn_norm, h))


def decode_on_rows(
    model: Transformer,
    kernels: RowKernels,
    token: torch.Tensor,
    input_pos: torch.Tensor,
    step: StepWeights | None = None,
) -> torch.Tensor:
    """`decode_one_token(model, token, input_pos)` with the single-row work on `kernels`: logits (1, V). With the
    model's `step` weights (`step_weights.gather_step`), the whole step is one kernel call when the kernels take it;
    otherwise block by block, each in one call or operation by operation."""
    if token.numel() != 1:  # the kernels take one row: a batch decodes on torch's kernels
        return decode_one_token(model, token, input_pos)
    if step is not None:
        logits = kernels.decode_step(step, token, input_pos)
        if logits is not None:
            return logits
    freqs, mask, slots = model.positions(input_pos)
    x = model.tok_embeddings(token)  # a new tensor: the block call updates it in place
    for block in model.blocks:
        if not block_in_one_call(kernels, block, x, freqs, mask, slots):
            x = block_on_rows(kernels, block, x, freqs, mask, slots)
    return kernels(rms_norm_on_rows(kernels, model.norm, x), model.output.weight)[:, -1]


class RowKernelStep:
    """A decode step (`DecodeFn`) on `kernels`. It keeps the last model's `StepWeights` while their witness holds
    (gathered again when a module, weight or cache on the way was replaced), so a token does not walk the model.
    `greedy` (`generate.GreedyRun`) runs several greedy tokens in one kernel call."""

    def __init__(self, kernels: RowKernels) -> None:
        self.kernels = kernels
        self._kept: StepWeights | None = None

    def weights(self, model: Transformer) -> StepWeights | None:
        """The model's `StepWeights` as it is now (None: no whole step takes it)."""
        kept = self._kept
        if kept is None or not kept.holds(model):
            kept = self._kept = gather_step(model)
        return kept

    def __call__(self, model: Transformer, token: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        step = self.weights(model) if token.numel() == 1 else None
        return decode_on_rows(model, self.kernels, token, input_pos, step)

    def greedy(self, model: Transformer, token: int, position: int, n: int, eos: int) -> list[int] | None:
        step = self.weights(model)
        return None if step is None else self.kernels.decode_greedy(step, token, position, n, eos)


def row_kernel_step(kernels: RowKernels) -> RowKernelStep:
    """A decode step (`DecodeFn`) on `kernels`."""
    return RowKernelStep(kernels)
