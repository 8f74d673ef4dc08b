"""The decode step of a quantized model on m7b's quantized CPU kernels (`cpu_kernels_quant.QuantRowKernels`): each
block in one call when the kernels take it (AVX2), else operation by operation (the products on the kernels, the
rest the model's own torch code); the output projection, kept in the release's precision, on the bf16 kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .cpu_kernels_quant import QuantRowKernels
from .generate import DecodeFn, decode_one_token
from .model import FeedForward, Transformer, TransformerBlock
from .row_kernels import BLOCK_WEIGHTS, decode_position


def block_modules(block: TransformerBlock) -> tuple[object, ...]:
    """The block's seven linears in `row_kernels.BLOCK_WEIGHTS` order (the C ABI's)."""
    return tuple(block.get_submodule(name.removesuffix(".weight")) for name in BLOCK_WEIGHTS)


def quant_block_on_rows(
    kernels: QuantRowKernels,
    block: TransformerBlock,
    x: torch.Tensor,
    freqs: torch.Tensor,
    mask: torch.Tensor,
    slots: torch.Tensor,
) -> torch.Tensor:
    """`block(x, ...)` for one decode row, the products on the kernels."""
    a, f = block.attention, block.feed_forward
    assert isinstance(f, FeedForward), "quantized weights are for dense releases (loader.load_release refuses a MoE)"
    if (
        block.attention.kv_cache is not None
        and block.attention_norm.eps == block.ffn_norm.eps
        and kernels.block_step(
            x,
            (block.attention_norm.weight, block.ffn_norm.weight),
            block.attention_norm.eps,
            block_modules(block),
            decode_position(a, freqs, slots, mask),
        )
    ):
        return x
    qkv = kernels.stack(block.attention_norm(x), (a.wq, a.wk, a.wv))
    kv_size = a.n_kv_heads * a.head_dim
    q, k, v = qkv.split([a.n_heads * a.head_dim, kv_size, kv_size], dim=-1)
    h = x + kernels(a.attend(q, k, v, freqs, mask, slots, decode=True), a.wo)
    gate, up = kernels.stack(block.ffn_norm(h), (f.w1, f.w3)).split([f.w1.out_features, f.w3.out_features], -1)
    return h + kernels(F.silu(gate) * up, f.w2)


def decode_on_quant_rows(
    model: Transformer, kernels: QuantRowKernels, token: torch.Tensor, input_pos: torch.Tensor
) -> torch.Tensor:
    """`decode_one_token(model, token, input_pos)` with the quantized products on `kernels`: logits (1, V)."""
    if token.numel() != 1:
        return decode_one_token(model, token, input_pos)
    freqs, mask, slots = model.positions(input_pos)
    x = model.tok_embeddings(token)  # a new tensor: the block call updates it in place
    for block in model.blocks:
        x = quant_block_on_rows(kernels, block, x, freqs, mask, slots)
    bf16 = kernels.bf16
    normed = bf16.rms_norm(x, model.norm.weight, model.norm.eps) if bf16 is not None else None
    normed = normed if normed is not None else model.norm(x)
    output = model.output
    if bf16 is not None and isinstance(output, torch.nn.Linear):
        return bf16(normed, output.weight)[:, -1]
    return output(normed)[:, -1]


def quant_kernel_step(kernels: QuantRowKernels) -> DecodeFn:
    def run(model: Transformer, token: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return decode_on_quant_rows(model, kernels, token, input_pos)

    return run
