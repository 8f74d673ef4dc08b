"""The architecture a release declares in `params.json`, and the checkpoint shapes it implies."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from m7b.errors import InvalidInputError, NotFoundError, UnsupportedArchitectureError

# The keys of Mistral 7B v0.1's params.json, in its order; rope_theta is optional (absent means 10000).
REQUIRED_INT = ("dim", "n_layers", "head_dim", "hidden_dim", "n_heads", "n_kv_heads", "sliding_window", "vocab_size")
DEFAULT_ROPE_THETA = 10000.0

# Bounds on what a params.json may declare, far beyond any released model and far below what would overflow or
# exhaust memory before the weights are compared with them (Mistral 7B: dim 4096, vocab 32000, window 4096).
MAX_INT_FIELD = 1 << 24  # every integer field is at most 16,777,216
MIN_SLIDING_WINDOW = 2  # a window of 1 attends to nothing but the token itself; 0 to nothing at all
MAX_ROPE_THETA = 1e12  # later Mistral releases use 1e6
MAX_PARAMS_BYTES = 1 << 20  # Mistral 7B's params.json is 200 bytes
_ASCII_INT = re.compile(r"[0-9]{1,9}")  # [0-9], not \d: str.isdigit() and \d accept '４', '٤' and '²'


TENSORS_PER_LAYER = 9


@dataclass(frozen=True)
class MixtureOfExperts:
    """A params.json `moe` block (Mixtral): experts per layer, and how many each token is routed to."""

    num_experts: int
    num_experts_per_tok: int

    def describe(self) -> str:
        return f"{self.num_experts} experts, {self.num_experts_per_tok} per token"

    @property
    def unsupported(self) -> str:
        """Why m7b's runtime cannot run (or convert) a release with this block."""
        return f"mixture of experts: {self.describe()}"


def carried_moe(exc: UnsupportedArchitectureError) -> MixtureOfExperts | None:
    """The `moe` block `exc` carries (m7b.errors, a layer below the manifests, types it only as object)."""
    return exc.moe if isinstance(exc.moe, MixtureOfExperts) else None


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

    def with_window(self, window: int) -> Architecture:
        """The same model attending over a smaller window (the smoke battery tests the rolling cache with it): at
        least MIN_SLIDING_WINDOW and at most the declared sliding_window, which sizes everything a run allocates."""
        if not MIN_SLIDING_WINDOW <= window <= self.sliding_window:
            raise InvalidInputError(
                f"window must be between {MIN_SLIDING_WINDOW} and {self.sliding_window} (params.json's "
                f"sliding_window), found {window}: a smaller window tests the same rolling cache",
                field="window",
            )
        return replace(self, sliding_window=window)

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

    @property
    def tensor_count(self) -> int:
        """How many tensors the checkpoint holds: embeddings, 9 per layer, the final norm and the output."""
        return 3 + TENSORS_PER_LAYER * self.n_layers

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every checkpoint key with its shape, in the original checkpoint's order (`tensor_count` entries: compare
        that with a checkpoint's count before building this, it grows with n_layers)."""
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
        """The sum over `tensor_shapes()`, in closed form (no per-layer table)."""
        d, hd, kv = self.dim, self.head_dim, self.n_kv_heads * self.head_dim
        per_layer = 2 * self.n_heads * hd * d + 2 * kv * d + 3 * self.hidden_dim * d + 2 * d
        return 2 * self.vocab_size * d + d + self.n_layers * per_layer


def _int_field(raw: dict[str, Any], key: str, where: str) -> int:
    value = raw[key]
    if key == "sliding_window" and isinstance(value, str):
        # Some re-uploads carry the window as a string; accept a short string of ASCII digits, nothing else.
        text = value.strip()
        if len(text) > 9 and text.isascii() and text.isdigit():
            raise InvalidInputError(
                f"{where}: 'sliding_window' must be at most {MAX_INT_FIELD:,}, found a string of {len(text):,} digits"
            )
        if not _ASCII_INT.fullmatch(text):
            raise InvalidInputError(
                f"{where}: 'sliding_window' must be an integer, found the string {_short(value)} "
                "(a JSON number, or a string of ASCII digits)"
            )
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{where}: '{key}' must be an integer, found {type(value).__name__} {_short(value)}")
    low = MIN_SLIDING_WINDOW if key == "sliding_window" else 1
    if value < low:
        raise InvalidInputError(f"{where}: '{key}' must be at least {low}, found {value}")
    if value > MAX_INT_FIELD:
        raise InvalidInputError(
            f"{where}: '{key}' must be at most {MAX_INT_FIELD:,} (far beyond any released model), found {_short(value)}"
        )
    return value


def _short(value: Any) -> str:
    text = (
        repr(value)
        if not isinstance(value, int) or value.bit_length() < 1000
        else f"a {len(str(value)):,}-digit number"
    )
    return text if len(text) <= 40 else text[:37] + "..."


def _float_field(raw: dict[str, Any], key: str, where: str, below: float) -> float:
    """A finite positive number below `below` (exclusive for norm_eps, inclusive for rope_theta)."""
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(f"{where}: '{key}' must be a positive number, found {_short(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise InvalidInputError(f"{where}: '{key}' must be a finite positive number, found {_short(value)}")
    if number <= 0:
        raise InvalidInputError(f"{where}: '{key}' must be a positive number, found {_short(value)}")
    if key == "norm_eps" and number >= below:
        raise InvalidInputError(f"{where}: 'norm_eps' must be below 1 (Mistral uses 1e-05), found {_short(value)}")
    if number > below:
        raise InvalidInputError(f"{where}: '{key}' must be at most {below:g}, found {_short(value)}")
    return number


def _moe(raw: Any, where: str) -> MixtureOfExperts:
    fields = ("num_experts", "num_experts_per_tok")
    if not isinstance(raw, dict) or any(
        isinstance(raw.get(k), bool) or not isinstance(raw.get(k), int) or not 1 <= raw[k] <= MAX_INT_FIELD
        for k in fields
    ):
        raise InvalidInputError(
            f"{where}: 'moe' must be a table of integers num_experts and num_experts_per_tok "
            f"(1 to {MAX_INT_FIELD:,}), found {_short(raw)}"
        )
    moe = MixtureOfExperts(raw["num_experts"], raw["num_experts_per_tok"])
    if moe.num_experts_per_tok > moe.num_experts:
        raise InvalidInputError(
            f"{where}: 'moe' routes each token to {moe.num_experts_per_tok} of only {moe.num_experts} experts"
        )
    return moe


def architecture_from_mapping(raw: Any, where: str) -> Architecture:
    """Validate a params.json-like mapping; `where` names its origin in error messages.

    InvalidInputError for anything outside the bounds above; UnsupportedArchitectureError (also exit 4, carrying
    the `moe` block) for a well-formed mixture of experts, which m7b can fetch, verify and seed but not run.
    """
    if not isinstance(raw, dict):
        raise InvalidInputError(f"{where}: expected a JSON object of model parameters, found {type(raw).__name__}")
    if "moe" in raw:
        moe = _moe(raw["moe"], where)
        raise UnsupportedArchitectureError(
            f"{where}: declares a mixture of experts ({moe.describe()}); m7b's runtime runs dense Mistral models "
            "only, so this release can be fetched, verified and seeded but not run, smoke-tested or converted",
            moe,
        )
    missing = [k for k in (*REQUIRED_INT, "norm_eps") if k not in raw]
    if missing:
        raise InvalidInputError(
            f"{where}: missing field(s) {', '.join(missing)}; a Mistral params.json has all of "
            f"{', '.join((*REQUIRED_INT, 'norm_eps'))}"
        )
    ints = {k: _int_field(raw, k, where) for k in REQUIRED_INT}
    norm_eps = _float_field(raw, "norm_eps", where, below=1.0)
    rope_theta = (
        _float_field(raw, "rope_theta", where, below=MAX_ROPE_THETA) if raw.get("rope_theta") is not None else None
    )
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
    size = path.stat().st_size
    if size > MAX_PARAMS_BYTES:
        raise InvalidInputError(
            f"{path} is {size:,} bytes; a params.json is a few hundred (at most {MAX_PARAMS_BYTES:,} are read): "
            "restore the release's own params.json"
        )
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, >4300-digit integers
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise InvalidInputError(
            f"{path} is not valid JSON ({reason}); expected the release's model parameters"
        ) from exc
    return architecture_from_mapping(raw, str(path))


def runtime_support(path: Path) -> str | None:
    """Why m7b's runtime cannot run the release whose params.json is `path` (its mixture of experts, or what is
    wrong with the file), or None when it can: `load_params` as a verdict instead of an error."""
    try:
        load_params(path)
    except UnsupportedArchitectureError as exc:
        return exc.moe.unsupported if isinstance(exc.moe, MixtureOfExperts) else str(exc)
    except InvalidInputError as exc:
        return str(exc)
    return None
