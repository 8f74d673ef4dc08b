"""The Mistral transformer (gpt-fast style): module names mirror the checkpoint keys, so a release's state dict
loads with no renaming.

Attention is grouped-query (n_kv_heads < n_heads) through `scaled_dot_product_attention`, restricted to a sliding
window: the query at position i sees the keys at positions i-W+1 … i (W keys including itself). Keys and values
live in a rolling buffer (`RollingKVCache`) of capacity min(W, max context) per layer. Without a window (Mixtral)
W is every position the model addresses, so the cache is sized to the run. A `moe` architecture's feed-forward is
a mixture of experts (`moe.py`).

This is the plain model. The fast paths attach from their own modules: the stacked projections (`fused.py`,
`fuse_projections`), the decode step on m7b's CPU row kernels (`row_kernels.py`), the compiled and CUDA-graph
steps (`fast_decode.py`).
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from m7b.errors import InvalidInputError

from .args import ModelArgs
from .attention import band_mask, grouped_attention, grouped_mask
from .cache import RollingKVCache
from .moe import MoeFeedForward


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def precompute_freqs(
    seq_len: int, head_dim: int, theta: float, device: torch.device | str | None = None
) -> torch.Tensor:
    """cos and sin of each position's rotation angles: shape (seq_len, head_dim // 2, 2), float32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    return torch.stack([angles.cos(), angles.sin()], dim=-1)


def apply_rotary_emb(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2j], x[2j+1]) of x (batch, seq, heads, head_dim) by each position's angles.

    The reference's complex multiply, `view_as_complex(x) * polar(1, angle)`, written out in real numbers (it
    compiles everywhere): (a + ib) * (cos + i sin). `freqs`: (seq, head_dim // 2, 2) cos/sin pairs, or the same
    rotations as complex numbers (seq, head_dim // 2). Computed in float32, returned in x's dtype.
    """
    pairs = torch.view_as_real(freqs) if freqs.is_complex() else freqs
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    f = pairs.view(1, xs.shape[1], 1, xs.shape[3], 2)
    re = xs[..., 0] * f[..., 0] - xs[..., 1] * f[..., 1]
    im = xs[..., 1] * f[..., 0] + xs[..., 0] * f[..., 1]
    return torch.stack([re, im], dim=-1).flatten(3).type_as(x)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        self.kv_cache: RollingKVCache | None = None

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of x (`fused.py` makes this one product)."""
        return self.wq(x), self.wk(x), self.wv(x)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        freqs: torch.Tensor,
        mask: torch.Tensor,
        slots: torch.Tensor,
        decode: bool,
    ) -> torch.Tensor:
        """The heads' outputs (batch, L, n_heads * head_dim) for projections q, k, v (batch, L, heads * head_dim):
        rotary embedding, the cache write at `slots`, attention over the cache under `mask`."""
        b, length, _ = q.shape
        cache = self.kv_cache
        assert cache is not None, "call Transformer.setup_caches() first"
        q = q.view(b, length, self.n_heads, self.head_dim)
        k = k.view(b, length, self.n_kv_heads, self.head_dim)
        v = v.view(b, length, self.n_kv_heads, self.head_dim)
        q, k = apply_rotary_emb(q, freqs), apply_rotary_emb(k, freqs)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if decode:
            # One new position p: its slot held p - capacity, which no query at p or later can see.
            cache.write(slots, k, v)
            keys, values = cache.k_cache, cache.v_cache
        else:
            # A chunk: its writes could overwrite positions its own first queries still see, so attend over
            # (cache as it was) + chunk, then store the chunk's last `len(slots)` positions.
            keys = torch.cat([cache.k_cache, k.to(cache.k_cache.dtype)], dim=2)
            values = torch.cat([cache.v_cache, v.to(cache.v_cache.dtype)], dim=2)
            n = slots.shape[0]
            cache.write(slots, k[:, :, -n:], v[:, :, -n:])
        y = grouped_attention(q, keys.to(q.dtype), values.to(q.dtype), mask)  # no-op casts unless cache_dtype
        return y.transpose(1, 2).reshape(b, length, self.n_heads * self.head_dim)

    def forward(
        self, x: torch.Tensor, freqs: torch.Tensor, mask: torch.Tensor, slots: torch.Tensor, decode: bool
    ) -> torch.Tensor:
        q, k, v = self.project(x)
        return self.wo(self.attend(q, k, v, freqs, mask, slots, decode))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.w1 = nn.Linear(args.dim, args.hidden_dim, bias=False)
        self.w2 = nn.Linear(args.hidden_dim, args.dim, bias=False)
        self.w3 = nn.Linear(args.dim, args.hidden_dim, bias=False)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The gate w1 x and the up projection w3 x (`fused.py` makes this one product)."""
        return self.w1(x), self.w3(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.project(x)
        return self.w2(F.silu(gate) * up)


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward: FeedForward | MoeFeedForward = (
            FeedForward(args) if args.moe is None else MoeFeedForward(args, lambda: FeedForward(args))
        )
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(
        self, x: torch.Tensor, freqs: torch.Tensor, mask: torch.Tensor, slots: torch.Tensor, decode: bool
    ) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), freqs, mask, slots, decode)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    slot_pos: torch.Tensor  # buffers made by `setup_caches`: each cache slot's position (-1: empty) ...
    freqs: torch.Tensor  # ... and the rotary table for positions 0 … max_seq_len-1

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        self.max_seq_len = 0

    @property
    def blocks(self) -> list[TransformerBlock]:
        """The layers, typed (an `nn.ModuleList` yields plain `nn.Module`s)."""
        return cast(list[TransformerBlock], list(self.layers))

    @property
    def window(self) -> int:
        """The keys a query sees: the sliding window, or every addressable position (full attention)."""
        return self.args.attention_window

    @property
    def capacity(self) -> int:
        """Positions each layer's cache holds (0 before `setup_caches`)."""
        cache = self.blocks[0].attention.kv_cache
        return 0 if cache is None else cache.capacity

    def setup_caches(
        self, batch_size: int, max_seq_len: int, capacity: int | None = None, cache_dtype: torch.dtype | None = None
    ) -> None:
        """Allocate the rolling caches for positions 0 … max_seq_len-1.

        `capacity` defaults to min(W, max_seq_len); a larger one (e.g. max_seq_len) keeps every position, which
        with the band mask is the full-recompute reference the rolling cache is tested against.
        """
        if max_seq_len < 1:
            raise InvalidInputError(f"max_seq_len must be at least 1, found {max_seq_len}")
        weight = self.output.weight
        capacity = capacity or min(self.window, max_seq_len)
        dtype = cache_dtype or weight.dtype
        # Ordinary tensors even when called under inference_mode, so that later calls in or out of it may
        # update them in place.
        with torch.inference_mode(False):
            for layer in self.blocks:
                layer.attention.kv_cache = RollingKVCache(
                    batch_size, self.args.n_kv_heads, capacity, self.args.head_dim, dtype, weight.device
                )
            self.register_buffer(
                "slot_pos", torch.full((capacity,), -1, dtype=torch.long, device=weight.device), persistent=False
            )
            self.register_buffer(
                "freqs",
                precompute_freqs(max_seq_len, self.args.head_dim, self.args.effective_rope_theta, weight.device),
                persistent=False,
            )
        self.max_seq_len = max_seq_len

    def reset_caches(self) -> None:
        """Forget every cached position, keeping the buffers (and so any compiled graph that uses them)."""
        self.slot_pos.fill_(-1)
        for layer in self.blocks:
            if layer.attention.kv_cache is not None:
                layer.attention.kv_cache.k_cache.zero_()
                layer.attention.kv_cache.v_cache.zero_()

    def cache_nbytes(self) -> int:
        """Bytes held by the key/value caches of all layers."""
        return sum(layer.attention.kv_cache.nbytes() for layer in self.blocks if layer.attention.kv_cache)

    def positions(self, input_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For consecutive positions `input_pos` (L,): their rotations (L, head_dim // 2, 2), the mask of the keys
        they see (a `grouped_mask`), and the cache slots their keys go to; the slots' positions are recorded.

        One position (decode) attends over the cache; a chunk over the cache as it was plus itself, and only its
        last `capacity` positions are stored.
        """
        length = input_pos.shape[0]
        capacity = self.capacity
        if length == 1:
            slots = input_pos % capacity
            self.slot_pos.index_copy_(0, slots, input_pos)
            key_pos = self.slot_pos
        else:
            write_pos = input_pos[-min(length, capacity) :]
            slots = write_pos % capacity
            key_pos = torch.cat([self.slot_pos, input_pos])  # a new tensor: the cache's positions as they were
            self.slot_pos.index_copy_(0, slots, write_pos)
        mask = grouped_mask(band_mask(input_pos, key_pos, self.window), self.args.n_rep)
        return self.freqs[input_pos], mask, slots

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Logits for `tokens` (batch, L) at consecutive positions `input_pos` (L,), continuing the cache.

        L == 1 is the decode step; any L > 1 is a prefill chunk (any length: a chunk longer than the cache
        keeps only its last `capacity` positions, and chunks of at most W give the same logits as one pass).
        """
        decode = tokens.shape[1] == 1
        freqs, mask, slots = self.positions(input_pos)
        x = self.tok_embeddings(tokens)
        for layer in self.blocks:
            x = layer(x, freqs, mask, slots, decode)
        if last_only:
            x = x[:, -1:]
        return self.output(self.norm(x))
