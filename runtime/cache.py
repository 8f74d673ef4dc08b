"""The rolling-buffer KV cache (as in mistral-src): position p lives in slot p % capacity.

With capacity = min(W, max context), a slot is overwritten only once its position has left every later query's
window, so memory stops growing once W tokens are in. Keys are stored after rotary embedding, so their order in the
buffer does not matter: attention is a sum over keys, and the mask is built from each slot's position.
"""

from __future__ import annotations

import torch
from torch import nn


class RollingKVCache(nn.Module):
    """One layer's keys and values, shaped (batch, n_kv_heads, capacity, head_dim)."""

    k_cache: torch.Tensor  # buffers, registered in __init__
    v_cache: torch.Tensor

    def __init__(
        self,
        batch_size: int,
        n_kv_heads: int,
        capacity: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        shape = (batch_size, n_kv_heads, capacity, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    @property
    def capacity(self) -> int:
        return self.k_cache.shape[2]

    def write(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v of shape (batch, n_kv_heads, len(slots), head_dim) at `slots` (distinct)."""
        self.k_cache.index_copy_(2, slots, k.to(self.k_cache.dtype))
        self.v_cache.index_copy_(2, slots, v.to(self.v_cache.dtype))

    def nbytes(self) -> int:
        return self.k_cache.nbytes + self.v_cache.nbytes
