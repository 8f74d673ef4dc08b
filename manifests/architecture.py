"""The architecture a release declares in `params.json`, and the checkpoint shapes it implies."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from m7b.errors import InvalidInputError, NotFoundError

# The keys of Mistral 7B v0.1's params.json, in its order; rope_theta is optional (absent means 10000).
REQUIRED_INT = ("dim", "n_layers", "head_dim", "hidden_dim", "n_heads", "n_kv_heads", "sliding_window", "vocab_size")
DEFAULT_ROPE_THETA = 10000.0


@dataclass(frozen=True)
class Architecture:
    dim: int
    n_layers: int
    head_dim: int
    hidden_dim: int
    n_heads: int
    n_kv_heads: int
    norm_eps: float
    sliding_window: int
    vocab_size: int
    rope_theta: float | None = None

    @property
    def effective_rope_theta(self) -> float:
        return DEFAULT_ROPE_THETA if self.rope_theta is None else self.rope_theta

    @property
    def n_rep(self) -> int:
        """How many query heads share one key/value head."""
        return self.n_heads // self.n_kv_heads

    def resolved(self) -> Architecture:
        """The values a model runs with: an undeclared rope_theta replaced by its default (10000 for v0.1, not the
        1e6 of later releases). The runtime's `ModelArgs` is this class."""
        return replace(self, rope_theta=self.effective_rope_theta)

    @classmethod
    def from_architecture(cls, arch: Architecture) -> Architecture:
        """`ModelArgs.from_architecture(arch)`: the architecture as a model runs it (see `resolved`)."""
        return arch.resolved()

    @classmethod
    def from_params_file(cls, path: Path) -> Architecture:
        """`ModelArgs.from_params_file(path)`: read and validate a params.json, resolved for running."""
        return load_params(path).resolved()

    def to_params(self) -> dict[str, Any]:
        """The params.json mapping, in the original key order; rope_theta only when declared."""
        out = asdict(self)
        if out["rope_theta"] is None:
            del out["rope_theta"]
        order = [
            "dim",
            "n_layers",
            "head_dim",
            "hidden_dim",
            "n_heads",
            "n_kv_heads",
            "norm_eps",
            "sliding_window",
            "vocab_size",
            "rope_theta",
        ]
        return {k: out[k] for k in order if k in out}

    def to_json(self) -> str:
        return json.dumps(self.to_params())

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every checkpoint key with its shape, in the original checkpoint's order."""
        d, hd, kv = self.dim, self.head_dim, self.n_kv_heads * self.head_dim
        shapes: dict[str, tuple[int, ...]] = {"tok_embeddings.weight": (self.vocab_size, d)}
        for i in range(self.n_layers):
            p = f"layers.{i}."
            shapes[p + "attention.wq.weight"] = (self.n_heads * hd, d)
            shapes[p + "attention.wk.weight"] = (kv, d)
            shapes[p + "attention.wv.weight"] = (kv, d)
            shapes[p + "attention.wo.weight"] = (d, self.n_heads * hd)
            shapes[p + "feed_forward.w1.weight"] = (self.hidden_dim, d)
            shapes[p + "feed_forward.w2.weight"] = (d, self.hidden_dim)
            shapes[p + "feed_forward.w3.weight"] = (self.hidden_dim, d)
            shapes[p + "attention_norm.weight"] = (d,)
            shapes[p + "ffn_norm.weight"] = (d,)
        shapes["norm.weight"] = (d,)
        shapes["output.weight"] = (self.vocab_size, d)
        return shapes

    def parameter_count(self) -> int:
        total = 0
        for shape in self.tensor_shapes().values():
            n = 1
            for s in shape:
                n *= s
            total += n
        return total


def _int_field(raw: dict[str, Any], key: str, where: str) -> int:
    value = raw[key]
    if key == "sliding_window" and isinstance(value, str):
        # Some re-uploads carry the window as a string; accept an integer string, nothing else.
        if value.strip().isdigit():
            return int(value.strip())
        raise InvalidInputError(f"{where}: 'sliding_window' must be an integer, found the string {value!r}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{where}: '{key}' must be an integer, found {type(value).__name__} {value!r}")
    if value <= 0:
        raise InvalidInputError(f"{where}: '{key}' must be positive, found {value}")
    return value


def _float_field(raw: dict[str, Any], key: str, where: str) -> float:
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise InvalidInputError(f"{where}: '{key}' must be a positive number, found {value!r}")
    return float(value)


def architecture_from_mapping(raw: Any, where: str) -> Architecture:
    """Validate a params.json-like mapping; `where` names its origin in error messages."""
    if not isinstance(raw, dict):
        raise InvalidInputError(f"{where}: expected a JSON object of model parameters, found {type(raw).__name__}")
    missing = [k for k in (*REQUIRED_INT, "norm_eps") if k not in raw]
    if missing:
        raise InvalidInputError(
            f"{where}: missing field(s) {', '.join(missing)}; a Mistral params.json has all of "
            f"{', '.join((*REQUIRED_INT, 'norm_eps'))}"
        )
    ints = {k: _int_field(raw, k, where) for k in REQUIRED_INT}
    norm_eps = _float_field(raw, "norm_eps", where)
    rope_theta = _float_field(raw, "rope_theta", where) if raw.get("rope_theta") is not None else None
    arch = Architecture(norm_eps=norm_eps, rope_theta=rope_theta, **ints)
    if arch.n_heads % arch.n_kv_heads:
        raise InvalidInputError(
            f"{where}: n_heads ({arch.n_heads}) must be a multiple of n_kv_heads ({arch.n_kv_heads})"
        )
    if arch.head_dim % 2:
        raise InvalidInputError(f"{where}: head_dim must be even for rotary embeddings, found {arch.head_dim}")
    return arch


def load_params(path: Path) -> Architecture:
    """Read and validate a release's params.json."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"{path} not found: a release folder must hold params.json")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{path} is not valid JSON ({exc}); expected the release's model parameters") from exc
    return architecture_from_mapping(raw, str(path))
