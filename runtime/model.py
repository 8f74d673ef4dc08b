"""The Mistral transformer (gpt-fast style): module names mirror the checkpoint keys, so a release's state dict
loads with no renaming.

Attention is grouped-query (n_kv_heads < n_heads) through `scaled_dot_product_attention`, restricted to a sliding
window: the query at position i sees the keys at positions i-W+1 … i (W keys including itself). Keys and values
live in a rolling buffer (`RollingKVCache`) of capacity min(W, max context) per layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from m7b.errors import InvalidInputError

from .args import ModelArgs
from .cache import RollingKVCache


@dataclass(frozen=True)
class DecodePosition:
    """What one decode position's attention needs beside its q|k|v row, for the row kernels."""

    freqs: torch.Tensor  # the position's rotations (complex, or cos/sin pairs)
    k_cache: torch.Tensor  # the layer's rolling caches, (1, n_kv_heads, capacity, head_dim)
    v_cache: torch.Tensor
    slots: torch.Tensor  # the one slot this position writes
    mask: torch.Tensor  # (1, capacity): the slots it sees
    heads: tuple[int, int, int]  # n_heads, n_kv_heads, head_dim


class RowKernels(Protocol):
    """Kernels for one row (`m7b.runtime.cpu_kernels.BF16RowKernels`): each falls back to torch for inputs it
    does not take (`attention_step` and `block_step` by returning None / False)."""

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


@dataclass
class Kernels:
    """The kernels a model's layers use, one holder shared by all of them: `rows` (None: torch's) computes the
    single-row work of a decode step (products, RMSNorm, SwiGLU); everything else is torch's."""

    rows: RowKernels | None = None

    def for_row(self, x: torch.Tensor) -> RowKernels | None:
        """The row kernels when `x` is a single row (a decode step's activations) and there are any, else None."""
        return self.rows if self.rows is not None and x.numel() == x.shape[-1] else None

    def linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        rows = self.for_row(x)
        return rows(x, weight) if rows is not None else F.linear(x, weight)

    def project(self, x: torch.Tensor, weights: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """x times each of `weights`: one kernel call for a single row, one F.linear each otherwise."""
        rows = self.for_row(x)
        if rows is not None:
            return rows.stack(x, weights).split([w.shape[0] for w in weights], dim=-1)
        return tuple(F.linear(x, w) for w in weights)

    def swiglu(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        rows = self.for_row(gate)
        return rows.swiglu(gate, up) if rows is not None else F.silu(gate) * up


class Linear(nn.Linear):
    """A bias-free nn.Linear (same parameter, same state-dict key) whose product goes through the model's
    `Kernels`."""

    def __init__(self, in_features: int, out_features: int, kernels: Kernels) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.kernels = kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernels.linear(x, self.weight)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, kernels: Kernels | None = None) -> None:
        super().__init__()
        self.eps = eps
        self.kernels = kernels or Kernels()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.kernels.for_row(x)
        if rows is not None:
            y = rows.rms_norm(x, self.weight, self.eps)
            if y is not None:
                return y
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


def rotate_pairs(xs: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """(a + ib) * (cos + i sin) on pairs xs (..., seq, heads, head_dim // 2, 2), in real arithmetic."""
    f = freqs.view(1, xs.shape[1], 1, xs.shape[3], 2)
    re = xs[..., 0] * f[..., 0] - xs[..., 1] * f[..., 1]
    im = xs[..., 1] * f[..., 0] + xs[..., 0] * f[..., 1]
    return torch.stack([re, im], dim=-1)


def apply_rotary_emb(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2j], x[2j+1]) of x (batch, seq, heads, head_dim) by each position's angles.

    This is the reference's complex multiply, `view_as_complex(x) * polar(1, angle)`. `freqs` is either complex
    (seq, head_dim // 2), one kernel (the eager CPU path), or (seq, head_dim // 2, 2) cos/sin pairs, the same
    product written out in real numbers (`rotate_pairs`), which compiles everywhere.
    """
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    if freqs.is_complex():
        rot = freqs.view(1, xs.shape[1], 1, xs.shape[3])
        return torch.view_as_real(torch.view_as_complex(xs) * rot).flatten(3).type_as(x)
    return rotate_pairs(xs, freqs).flatten(3).type_as(x)


def band_mask(query_pos: torch.Tensor, key_pos: torch.Tensor, window: int) -> torch.Tensor:
    """(queries, keys) booleans: True where key position k satisfies q-W < k <= q (negative k: an empty slot)."""
    q = query_pos[:, None]
    k = key_pos[None, :]
    return (k <= q) & (k > q - window) & (k >= 0)


def grouped_mask(mask: torch.Tensor, n_rep: int) -> torch.Tensor:
    """The (L, K) mask laid out for `grouped_attention`'s folded queries: (n_rep * L, K), or (1, K) when L is 1."""
    return mask if mask.shape[0] == 1 else mask.repeat(n_rep, 1)


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention of q (batch, n_heads, L, hd) over k, v (batch, n_kv_heads, K, hd) under a `grouped_mask`.

    Query head h reads key/value head h // n_rep. The n_rep query heads of a group are folded into the query
    length, so keys and values are never copied n_rep times (the memory traffic that dominates decoding).
    """
    b, n_heads, length, hd = q.shape
    n_kv = k.shape[1]
    q = q.reshape(b, n_kv, n_heads // n_kv * length, hd)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return y.view(b, n_heads, length, hd)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, kernels: Kernels) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.kernels = kernels
        self.wq = Linear(args.dim, args.n_heads * args.head_dim, kernels)
        self.wk = Linear(args.dim, args.n_kv_heads * args.head_dim, kernels)
        self.wv = Linear(args.dim, args.n_kv_heads * args.head_dim, kernels)
        self.wo = Linear(args.n_heads * args.head_dim, args.dim, kernels)
        self.kv_cache: RollingKVCache | None = None
        # wq, wk, wv stacked (`fuse`): one matrix-vector product, not three. A buffer outside the state dict.
        self.register_buffer("wqkv", None, persistent=False)

    def decode_position(self, freqs: torch.Tensor, slots: torch.Tensor, mask: torch.Tensor) -> DecodePosition:
        cache = self.kv_cache
        assert cache is not None, "call Transformer.setup_caches() first"
        heads = (self.n_heads, self.n_kv_heads, self.head_dim)
        return DecodePosition(freqs, cache.k_cache, cache.v_cache, slots, mask, heads)

    def fuse(self) -> None:
        """Stack wq, wk, wv into one matrix; the three weights become views of its rows (no extra memory, the
        state dict keeps its keys)."""
        self.wqkv = _fuse_rows(self.wq, self.wk, self.wv)

    def forward(
        self, x: torch.Tensor, freqs: torch.Tensor, mask: torch.Tensor, slots: torch.Tensor, decode: bool
    ) -> torch.Tensor:
        b, length, _ = x.shape
        rows = self.kernels.for_row(x)
        cache = self.kv_cache
        assert cache is not None, "call Transformer.setup_caches() first"
        weights = (self.wq.weight, self.wk.weight, self.wv.weight)
        if self.wqkv is not None or rows is not None:
            qkv = self.kernels.linear(x, self.wqkv) if self.wqkv is not None else rows.stack(x, weights)
            if decode and rows is not None:  # one C call for rotary, cache write and attention
                y = rows.attention_step(qkv, self.decode_position(freqs, slots, mask))
                if y is not None:
                    return self.wo(y.view(b, length, self.n_heads * self.head_dim))
            kv_size = self.n_kv_heads * self.head_dim
            q, k, v = qkv.split([self.n_heads * self.head_dim, kv_size, kv_size], dim=-1)
        else:
            q, k, v = self.wq(x), self.wk(x), self.wv(x)
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
        return self.wo(y.transpose(1, 2).reshape(b, length, self.n_heads * self.head_dim))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, args: ModelArgs, kernels: Kernels) -> None:
        super().__init__()
        self.kernels = kernels
        self.w1 = Linear(args.dim, args.hidden_dim, kernels)
        self.w2 = Linear(args.hidden_dim, args.dim, kernels)
        self.w3 = Linear(args.dim, args.hidden_dim, kernels)
        self.register_buffer("w13", None, persistent=False)  # w1, w3 stacked (`fuse`)

    def fuse(self) -> None:
        """Stack w1 and w3 into one matrix; both become views of its rows."""
        self.w13 = _fuse_rows(self.w1, self.w3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w13 is not None:
            gate, up = self.kernels.linear(x, self.w13).chunk(2, dim=-1)
        else:
            gate, up = self.kernels.project(x, (self.w1.weight, self.w3.weight))
        return self.w2(self.kernels.swiglu(gate, up))


def _fuse_rows(*linears: nn.Linear) -> torch.Tensor:
    """One weight holding the rows of each `linears` weight in order; each linear's weight becomes a view of it."""
    fused = torch.cat([lin.weight.detach() for lin in linears])
    begin = 0
    for lin in linears:
        rows = lin.weight.shape[0]
        lin.weight = nn.Parameter(fused[begin : begin + rows], requires_grad=False)
        begin += rows
    return fused


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, kernels: Kernels) -> None:
        super().__init__()
        self.attention = Attention(args, kernels)
        self.feed_forward = FeedForward(args, kernels)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps, kernels)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps, kernels)

    def decode_row(self, x: torch.Tensor, freqs: torch.Tensor, mask: torch.Tensor, slots: torch.Tensor) -> bool:
        """This block on one decode row, in place, as one call of the model's row kernels (`Kernels.rows`); False,
        with nothing changed, when there are none or they do not take these inputs (then call the module)."""
        a, f = self.attention, self.feed_forward
        rows, cache = a.kernels.rows, a.kv_cache
        if rows is None or cache is None or a.wqkv is not None or f.w13 is not None:
            return False
        if self.attention_norm.eps != self.ffn_norm.eps:  # the block kernel takes one eps
            return False
        return rows.block_step(
            x,
            (self.attention_norm.weight, self.ffn_norm.weight),
            self.attention_norm.eps,
            (a.wq.weight, a.wk.weight, a.wv.weight, a.wo.weight, f.w1.weight, f.w3.weight, f.w2.weight),
            a.decode_position(freqs, slots, mask),
        )

    def forward(
        self, x: torch.Tensor, freqs: torch.Tensor, mask: torch.Tensor, slots: torch.Tensor, decode: bool
    ) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), freqs, mask, slots, decode)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.kernels = Kernels()
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args, self.kernels) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps, self.kernels)
        self.output = Linear(args.dim, args.vocab_size, self.kernels)
        self.max_seq_len = 0

    @property
    def window(self) -> int:
        return self.args.sliding_window

    @property
    def capacity(self) -> int:
        """Positions each layer's cache holds (0 before `setup_caches`)."""
        cache = self.layers[0].attention.kv_cache
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
            for layer in self.layers:
                layer.attention.kv_cache = RollingKVCache(
                    batch_size, self.args.n_kv_heads, capacity, self.args.head_dim, dtype, weight.device
                )
            self.register_buffer(
                "slot_pos", torch.full((capacity,), -1, dtype=torch.long, device=weight.device), persistent=False
            )
            self.register_buffer(
                "freqs",
                precompute_freqs(max_seq_len, self.args.head_dim, self.args.rope_theta, weight.device),
                persistent=False,
            )
        self.max_seq_len = max_seq_len

    def fuse_projections(self) -> None:
        """gpt-fast's load-time fusion: wq/wk/wv and w1/w3 become one matrix each, so a decode step launches two
        matrix-vector products per layer fewer. Memory stays the same (the old weights become views); for weights
        memory-mapped from a file it makes a private copy, so the loader does it on GPUs only."""
        for layer in self.layers:
            layer.attention.fuse()
            layer.feed_forward.fuse()

    def reset_caches(self) -> None:
        """Forget every cached position, keeping the buffers (and so any compiled graph that uses them)."""
        self.slot_pos.fill_(-1)
        for layer in self.layers:
            layer.attention.kv_cache.k_cache.zero_()
            layer.attention.kv_cache.v_cache.zero_()

    def cache_nbytes(self) -> int:
        """Bytes held by the key/value caches of all layers."""
        return sum(layer.attention.kv_cache.nbytes() for layer in self.layers if layer.attention.kv_cache)

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Logits for `tokens` (batch, L) at consecutive positions `input_pos` (L,), continuing the cache.

        L == 1 is the decode step; any L > 1 is a prefill chunk (any length: a chunk longer than the cache
        keeps only its last `capacity` positions, and chunks of at most W give the same logits as one pass).
        """
        length = tokens.shape[1]
        capacity = self.capacity
        if length == 1:
            slots = input_pos % capacity
            self.slot_pos.index_copy_(0, slots, input_pos)
            key_pos = self.slot_pos
        else:
            write_pos = input_pos[-min(length, capacity) :]
            slots = write_pos % capacity
            key_pos = torch.cat([self.slot_pos, input_pos])
        mask = grouped_mask(band_mask(input_pos, key_pos, self.window), self.args.n_rep)
        freqs = self.freqs[input_pos]
        if freqs.device.type == "cpu" and not torch.compiler.is_compiling():
            freqs = torch.view_as_complex(freqs)  # one complex multiply per rotation instead of six real ops
        x = self.tok_embeddings(tokens)  # a new tensor: the row kernels may update it in place
        for layer in self.layers:
            if not (length == 1 and layer.decode_row(x, freqs, mask, slots)):
                x = layer(x, freqs, mask, slots, length == 1)
        if length > 1:
            self.slot_pos.index_copy_(0, slots, write_pos)
        if last_only:
            x = x[:, -1:]
        return self.output(self.norm(x))
