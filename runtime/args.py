"""`ModelArgs`: the hyper-parameters of a Mistral model, as its release's params.json declares them.

Validation lives in one place, `m7b.manifests.architecture`; this dataclass only carries the values the model needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from m7b.manifests.architecture import Architecture, load_params


@dataclass(frozen=True)
class ModelArgs:
    dim: int
    n_layers: int
    head_dim: int
    hidden_dim: int
    n_heads: int
    n_kv_heads: int
    norm_eps: float
    sliding_window: int
    vocab_size: int
    # v0.1's params.json has no rope_theta: 10000 applies (not the 1e6 of later releases).
    rope_theta: float = 10000.0

    @classmethod
    def from_architecture(cls, arch: Architecture) -> ModelArgs:
        return cls(
            dim=arch.dim,
            n_layers=arch.n_layers,
            head_dim=arch.head_dim,
            hidden_dim=arch.hidden_dim,
            n_heads=arch.n_heads,
            n_kv_heads=arch.n_kv_heads,
            norm_eps=arch.norm_eps,
            sliding_window=arch.sliding_window,
            vocab_size=arch.vocab_size,
            rope_theta=arch.effective_rope_theta,
        )

    @classmethod
    def from_params_file(cls, path: Path) -> ModelArgs:
        """Read and validate a params.json."""
        return cls.from_architecture(load_params(path))

    @property
    def n_rep(self) -> int:
        """How many query heads share one key/value head."""
        return self.n_heads // self.n_kv_heads
