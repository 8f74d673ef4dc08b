"""Generation, gpt-fast style: plain functions `prefill` and `decode_one_token`, and `generate` around them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from m7b.errors import InvalidInputError
from m7b.manifests.architecture import DEFAULT_MAX_POSITIONS

from .model import Transformer
from .sampling import SamplingConfig, sample

DecodeFn = Callable[[Transformer, torch.Tensor, torch.Tensor], torch.Tensor]


class GreedyRun(Protocol):
    """A decode step's optional `greedy` method: up to `n` greedy tokens after `token` at `position` in one call
    (each the argmax of its logits, as `sampling.greedy`), stopping after `eos` (< 0: never); None or [] when it
    does not take this model or position (then `generate` decodes token by token)."""

    def __call__(self, model: Transformer, token: int, position: int, n: int, eos: int) -> list[int] | None: ...


# A greedy run of several tokens lasts about this long, so tokens still reach `on_token` as they come (the run
# doubles while shorter, halves while longer, up to MAX_RUN tokens)
STREAM_INTERVAL_S = 0.02
MAX_RUN = 64

# The most positions (prompt plus generated tokens) one generation may address, unless params.json declares its
# max_seq_len (Mixtral 8x22B: 65,536): Mistral 7B's context as its Hugging Face config declares it
# (max_position_embeddings). The rotary table and caches are sized from prompt + max_tokens, so a larger
# --max-tokens would only allocate memory for positions the model was never trained on (10**8 tokens on the tiny
# preset: over 8 GB before the first token). `Architecture.max_positions` is the one rule.
MAX_POSITIONS = DEFAULT_MAX_POSITIONS
PREFILL_CHUNK = 4096  # the default prefill chunk: Mistral 7B's window, and a bound for full attention


@dataclass(frozen=True)
class GenerationConfig:
    max_tokens: int = 256
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    chunk_size: int | None = None  # prefill chunk; None: the window W, at most PREFILL_CHUNK (capped at W)
    stop_at_eos: bool = True

    def validate(self, max_positions: int = MAX_POSITIONS) -> None:
        """The values, with max_tokens against the positions the model addresses (`Architecture.max_positions`;
        before a model is known, MAX_SEQ_LEN bounds any)."""
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise InvalidInputError(f"max_tokens must be at least 1, found {self.max_tokens}", field="max_tokens")
        if self.max_tokens > max_positions:
            raise InvalidInputError(
                f"max_tokens must be at most {max_positions:,} (the positions the model can address, prompt "
                f"included), found {self.max_tokens:,}; ask for fewer tokens",
                field="max_tokens",
            )
        if self.chunk_size is not None and self.chunk_size < 1:
            raise InvalidInputError(f"the prefill chunk size must be at least 1, found {self.chunk_size}")
        self.sampling.validate()


def check_positions(prompt_tokens: int, max_tokens: int, max_positions: int = MAX_POSITIONS) -> None:
    """InvalidInputError (exit 4) when a prompt of `prompt_tokens` plus `max_tokens` needs more positions than the
    model addresses (`max_positions`, its `Architecture.max_positions`): call it before sizing anything from
    prompt + max_tokens."""
    needed = prompt_tokens + max_tokens
    if needed > max_positions:
        raise InvalidInputError(
            f"max_tokens {max_tokens:,} after a prompt of {prompt_tokens:,} tokens needs {needed:,} positions; "
            f"the model addresses at most {max_positions:,}: ask for at most "
            f"{max(max_positions - prompt_tokens, 0):,} tokens or shorten the prompt",
            field="max_tokens",
        )


@dataclass
class GenerationResult:
    prompt_tokens: list[int]
    tokens: list[int]
    stop_reason: str  # "eos" or "length"
    ttft_s: float  # from the start of prefill to the first sampled token
    prefill_s: float
    decode_s: float  # after the first token

    @property
    def prefill_tok_s(self) -> float:
        return len(self.prompt_tokens) / self.prefill_s if self.prefill_s > 0 else float("inf")

    @property
    def decode_tok_s(self) -> float:
        n = len(self.tokens) - 1
        return n / self.decode_s if n > 0 and self.decode_s > 0 else 0.0


def prefill(model: Transformer, tokens: torch.Tensor, start_pos: int, chunk_size: int) -> torch.Tensor:
    """Run `tokens` (batch, L) through the model in chunks of `chunk_size`; the last position's logits (batch, V)."""
    length = tokens.shape[1]
    logits = None
    for begin in range(0, length, chunk_size):
        chunk = tokens[:, begin : begin + chunk_size]
        pos = torch.arange(start_pos + begin, start_pos + begin + chunk.shape[1], device=tokens.device)
        logits = model(chunk, pos, last_only=True)
    assert logits is not None
    return logits[:, -1]


def decode_one_token(model: Transformer, token: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """Logits (batch, V) after `token` (batch, 1) at position `input_pos` (1,)."""
    return model(token, input_pos)[:, -1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def generate(
    model: Transformer,
    prompt: list[int],
    config: GenerationConfig,
    eos_id: int | None = None,
    on_token: Callable[[int], None] | None = None,
    decode_fn: DecodeFn = decode_one_token,
    max_seq_len: int | None = None,
) -> GenerationResult:
    """Complete `prompt` (token ids, BOS included) with up to `config.max_tokens` tokens.

    `on_token` sees each id as soon as it is sampled. The caches are (re)allocated for the prompt plus
    max_tokens unless they already cover `max_seq_len` (keep them across calls when `decode_fn` is compiled).
    """
    limit = model.args.max_positions
    config.validate(limit)
    if not prompt:
        raise InvalidInputError("the prompt has no tokens; give a prompt with some text")
    device = model.output.weight.device
    needed = len(prompt) + config.max_tokens
    check_positions(len(prompt), config.max_tokens, limit)
    if model.capacity and model.max_seq_len >= max(needed, max_seq_len or 0):
        model.reset_caches()
    else:
        model.setup_caches(1, max(needed, max_seq_len or 0))
    # at most W (a longer chunk could overwrite what its own queries see) and, with full attention, at most
    # PREFILL_CHUNK: a 30k-token prompt in one pass would build a (n_rep x 30k) x 30k mask
    chunk = min(config.chunk_size or min(model.window, PREFILL_CHUNK), model.window)
    generator = config.sampling.generator(device)

    tokens = torch.tensor([prompt], dtype=torch.long, device=device)
    _sync(device)
    start = time.perf_counter()
    logits = prefill(model, tokens, 0, chunk)
    _sync(device)
    prefill_s = time.perf_counter() - start
    next_token = sample(logits[0], config.sampling, generator)
    first = int(next_token.item())
    ttft = time.perf_counter() - start
    out = [first]
    if on_token:
        on_token(first)
    stop = "eos" if config.stop_at_eos and first == eos_id else "length"
    decode_start = time.perf_counter()
    pos = torch.tensor([len(prompt)], dtype=torch.long, device=device)
    greedy_run: GreedyRun | None = getattr(decode_fn, "greedy", None) if config.sampling.temperature == 0 else None
    run = 1
    while stop == "length" and len(out) < config.max_tokens:
        if greedy_run is not None:  # several tokens a call, each fed back inside the step
            began = time.perf_counter()
            eos = eos_id if config.stop_at_eos and eos_id is not None else -1
            ids = greedy_run(model, out[-1], int(pos.item()), min(run, config.max_tokens - len(out)), eos)
            if not ids:  # declined: token by token from here
                greedy_run = None
                continue
            for token in ids:
                out.append(token)
                if on_token:
                    on_token(token)
            pos += len(ids)
            next_token = torch.tensor([ids[-1]], dtype=torch.long, device=device)
            stop = "eos" if config.stop_at_eos and ids[-1] == eos_id else stop
            run = min(2 * run, MAX_RUN) if time.perf_counter() - began < STREAM_INTERVAL_S else max(1, run // 2)
            continue
        logits = decode_fn(model, next_token.view(1, 1), pos)
        next_token = sample(logits[0], config.sampling, generator)
        token = int(next_token.item())
        out.append(token)
        if on_token:
            on_token(token)
        pos += 1
        if config.stop_at_eos and token == eos_id:
            stop = "eos"
    _sync(device)
    decode_s = time.perf_counter() - decode_start
    return GenerationResult(
        prompt_tokens=list(prompt), tokens=out, stop_reason=stop, ttft_s=ttft, prefill_s=prefill_s, decode_s=decode_s
    )
