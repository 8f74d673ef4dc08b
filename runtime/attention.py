"""Attention in torch, written once: the sliding-window band mask and grouped-query attention over it.

The model's forward uses these functions, and so does the torch reference that m7b's CPU kernels are checked
against (`cpu_kernels_build.reference_attention`, their self-test and the tests): the C kernels are the only other
place the attention maths is written.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
