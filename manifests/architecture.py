"""The architecture a release declares in `params.json`, and the checkpoint shapes it implies."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from m7b.errors import InvalidInputError, NotFoundError

# The keys of Mistral 7B v0.1's params.json, in its order. Optional: sliding_window (absent: full attention, as in
# Mixtral), rope_theta (absent: mistral-inference's default, below), max_seq_len, moe.
REQUIRED_INT = ("dim", "n_layers", "head_dim", "hidden_dim", "n_heads", "n_kv_heads", "vocab_size")
OPTIONAL_INT = ("sliding_window", "max_seq_len")
PARAMS_ORDER = (
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
    "max_seq_len",
    "moe",
)
# mistral-inference's rope_theta when params.json has none: 1e4 with a sliding window (Mistral 7B v0.1), 1e6
# without one (Mixtral 8x7B).
DEFAULT_ROPE_THETA = 10000.0
DEFAULT_ROPE_THETA_FULL = 1_000_000.0
# The positions a run may address when params.json declares no max_seq_len: Mistral 7B's and Mixtral 8x7B's context
# (max_position_embeddings of their Hugging Face configs; the 8x7B torrent is named "32kseqlen").
DEFAULT_MAX_POSITIONS = 32_768
MAX_SEQ_LEN = 1 << 22  # 4,194,304 positions: far beyond any release (8x22B: 65,536)

# Bounds on what a params.json may declare, far beyond any released model and far below what would overflow or
# exhaust memory before the weights are compared with them (Mistral 7B: dim 4096, vocab 32000, window 4096).
MAX_INT_FIELD = 1 << 24  # every integer field is at most 16,777,216
MIN_SLIDING_WINDOW = 2  # a window of 1 attends to nothing but the token itself; 0 to nothing at all
MAX_ROPE_THETA = 1e12  # later Mistral releases use 1e6
MAX_PARAMS_BYTES = 1 << 20  # Mistral 7B's params.json is 200 bytes
_ASCII_INT = re.compile(r"[0-9]{1,9}")  # [0-9], not \d: str.isdigit() and \d accept '４', '٤' and '²'


TENSORS_PER_LAYER = 9  # a dense layer; a mixture of experts: 6 + 1 gate + 3 per expert


@dataclass(frozen=True)
class MixtureOfExperts:
    """A params.json `moe` block (Mixtral): experts per layer, and how many each token is routed to."""

    num_experts: int
    num_experts_per_tok: int

    def describe(self) -> str:
        return f"{self.num_experts} experts, {self.num_experts_per_tok} per token"

    def to_params(self) -> dict[str, int]:
        return {"num_experts": self.num_experts, "num_experts_per_tok": self.num_experts_per_tok}


@dataclass(frozen=True)
class Architecture:
    dim: int
    n_layers: int
    head_dim: int
    hidden_dim: int
    n_heads: int
    n_kv_heads: int
    norm_eps: float
    sliding_window: int | None  # None: full attention (no window)
    vocab_size: int
    rope_theta: float | None = None
    moe: MixtureOfExperts | None = None  # None: a dense feed-forward
    max_seq_len: int | None = None  # the positions params.json says the model addresses (8x22B: 65,536)

    @property
    def effective_rope_theta(self) -> float:
        """The declared rope_theta, else mistral-inference's default: 1e4 with a window, 1e6 without one."""
        if self.rope_theta is not None:
            return self.rope_theta
        return DEFAULT_ROPE_THETA if self.sliding_window is not None else DEFAULT_ROPE_THETA_FULL

    @property
    def max_positions(self) -> int:
        """The most positions (prompt and generated tokens) one run may address: params.json's max_seq_len, else
        DEFAULT_MAX_POSITIONS."""
        return self.max_seq_len or DEFAULT_MAX_POSITIONS

    @property
    def attention_window(self) -> int:
        """How many keys (itself included) a query sees: the sliding window, or every position (full attention)."""
        return self.sliding_window if self.sliding_window is not None else self.max_positions

    @property
    def full_attention(self) -> bool:
        return self.sliding_window is None

    @property
    def n_rep(self) -> int:
        """How many query heads share one key/value head."""
        return self.n_heads // self.n_kv_heads

    def resolved(self) -> Architecture:
        """The values a model runs with: an undeclared rope_theta replaced by mistral-inference's default (10000
        with a window, as Mistral 7B v0.1; 1e6 without one, as Mixtral 8x7B). The runtime's `ModelArgs` is this
        class."""
        return replace(self, rope_theta=self.effective_rope_theta)

    def with_window(self, window: int) -> Architecture:
        """The same model attending over a smaller window (the smoke battery tests the rolling cache with it): at
        least MIN_SLIDING_WINDOW and at most the declared sliding_window (or, with full attention, the positions the
        model addresses), which sizes everything a run allocates. The rope_theta stays the one the model runs with."""
        limit = self.attention_window
        if not MIN_SLIDING_WINDOW <= window <= limit:
            what = "params.json's sliding_window" if self.sliding_window is not None else "the positions it addresses"
            raise InvalidInputError(
                f"window must be between {MIN_SLIDING_WINDOW} and {limit} ({what}), found {window}: a smaller "
                "window tests the same rolling cache",
                field="window",
            )
        return replace(self, sliding_window=window, rope_theta=self.effective_rope_theta)

    @classmethod
    def from_architecture(cls, arch: Architecture) -> Architecture:
        """`ModelArgs.from_architecture(arch)`: the architecture as a model runs it (see `resolved`)."""
        return arch.resolved()

    @classmethod
    def from_params_file(cls, path: Path) -> Architecture:
        """`ModelArgs.from_params_file(path)`: read and validate a params.json, resolved for running."""
        return load_params(path).resolved()

    def to_params(self) -> dict[str, Any]:
        """The params.json mapping, in the original key order; optional fields only when declared."""
        out = asdict(self)
        if self.moe is not None:
            out["moe"] = self.moe.to_params()
        return {k: out[k] for k in PARAMS_ORDER if out.get(k) is not None}

    def to_json(self) -> str:
        return json.dumps(self.to_params())

    @property
    def tensors_per_layer(self) -> int:
        """9 in a dense layer; 7 + 3 per expert in a mixture of experts (attention, norms, gate, experts)."""
        return TENSORS_PER_LAYER if self.moe is None else 7 + 3 * self.moe.num_experts

    @property
    def tensor_count(self) -> int:
        """How many tensors the checkpoint holds: embeddings, `tensors_per_layer` per layer, the final norm and the
        output."""
        return 3 + self.tensors_per_layer * self.n_layers

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
            if self.moe is None:
                ffns = ["feed_forward."]
            else:  # mistral-inference's MoE checkpoint keys (moe_one_file_ref.py)
                shapes[p + "feed_forward.gate.weight"] = (self.moe.num_experts, d)
                ffns = [f"feed_forward.experts.{e}." for e in range(self.moe.num_experts)]
            for f in ffns:
                shapes[p + f + "w1.weight"] = (self.hidden_dim, d)
                shapes[p + f + "w2.weight"] = (d, self.hidden_dim)
                shapes[p + f + "w3.weight"] = (self.hidden_dim, d)
            shapes[p + "attention_norm.weight"] = (d,)
            shapes[p + "ffn_norm.weight"] = (d,)
        shapes["norm.weight"] = (d,)
        shapes["output.weight"] = (self.vocab_size, d)
        return shapes

    def parameter_count(self, experts: int | None = None) -> int:
        """The sum over `tensor_shapes()`, in closed form (no per-layer table); with `experts`, as if each layer
        held only that many experts (`active_parameter_count`)."""
        d, hd, kv = self.dim, self.head_dim, self.n_kv_heads * self.head_dim
        n_ffn = 1 if self.moe is None else (self.moe.num_experts if experts is None else experts)
        gate = 0 if self.moe is None else self.moe.num_experts * d
        per_layer = 2 * self.n_heads * hd * d + 2 * kv * d + n_ffn * 3 * self.hidden_dim * d + gate + 2 * d
        return 2 * self.vocab_size * d + d + self.n_layers * per_layer

    def active_parameter_count(self) -> int:
        """The parameters one token reads: every layer's attention, norms and gate, and only the experts it is
        routed to (all of a dense model; 12.9 billion of Mixtral 8x7B's 46.7)."""
        return self.parameter_count(None if self.moe is None else self.moe.num_experts_per_tok)


def _int_field(raw: dict[str, Any], key: str, where: str, high: int = MAX_INT_FIELD) -> int:
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
    if value > high:
        raise InvalidInputError(
            f"{where}: '{key}' must be at most {high:,} (far beyond any released model), found {_short(value)}"
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

    InvalidInputError (exit 4) for anything outside the bounds above. A `moe` block (Mixtral) makes each layer's
    feed-forward a mixture of experts; no `sliding_window` means full attention.
    """
    if not isinstance(raw, dict):
        raise InvalidInputError(f"{where}: expected a JSON object of model parameters, found {type(raw).__name__}")
    moe = _moe(raw["moe"], where) if raw.get("moe") is not None else None
    missing = [k for k in (*REQUIRED_INT, "norm_eps") if k not in raw]
    if missing:
        raise InvalidInputError(
            f"{where}: missing field(s) {', '.join(missing)}; a Mistral params.json has all of "
            f"{', '.join((*REQUIRED_INT, 'norm_eps'))}"
        )
    ints = {k: _int_field(raw, k, where) for k in REQUIRED_INT}
    window = _int_field(raw, "sliding_window", where) if raw.get("sliding_window") is not None else None
    max_seq_len = (
        _int_field(raw, "max_seq_len", where, high=MAX_SEQ_LEN) if raw.get("max_seq_len") is not None else None
    )
    norm_eps = _float_field(raw, "norm_eps", where, below=1.0)
    rope_theta = (
        _float_field(raw, "rope_theta", where, below=MAX_ROPE_THETA) if raw.get("rope_theta") is not None else None
    )
    arch = Architecture(
        norm_eps=norm_eps, rope_theta=rope_theta, sliding_window=window, moe=moe, max_seq_len=max_seq_len, **ints
    )
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
    """Why m7b's runtime cannot run the release whose params.json is `path` (what is wrong with the file), or None
    when it can (dense or a mixture of experts): `load_params` as a verdict instead of an error."""
    try:
        load_params(path)
    except InvalidInputError as exc:
        return str(exc)
    return None
