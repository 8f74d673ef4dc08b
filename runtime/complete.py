"""`complete`: a prompt continued by a loaded release, as `m7b run` does it (decode step prepared, then generate)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from m7b.owned import refuse_links_below
from m7b.store import Store

from .fast_decode import PreparedDecode, prepare_decode, resolve_mode
from .generate import GenerationConfig, GenerationResult, check_positions, generate
from .loader import Runtime
from .model import Transformer


@dataclass
class Completion:
    prompt: str
    text: str  # the generated text, decoded as it streamed
    prompt_token_ids: list[int]  # BOS included
    token_ids: list[int]  # the generated ids
    result: GenerationResult  # timings and stop reason
    prepared: PreparedDecode  # the decode step that ran
    first_token_at: float | None  # wall clock (unix seconds) when the first token was ready

    def figures(self) -> dict[str, object]:
        """The counts and rates `m7b run` reports."""
        r = self.result
        return {
            "prompt_tokens": len(r.prompt_tokens),
            "generated_tokens": len(r.tokens),
            "ttft_s": round(r.ttft_s, 6),
            "prefill_tok_s": round(r.prefill_tok_s, 2),
            "decode_tok_s": round(r.decode_tok_s, 2),
            "stop_reason": r.stop_reason,
        }


def prepare_step(model: Transformer, mode: str, needed: int, store: Store, cpu_kernels: str = "auto") -> PreparedDecode:
    """`prepare_decode` with the store's caches: compiled code under M7B_HOME/cache/compile (made here, so a store
    the disk refuses is a StorageError before anything compiles), CPU kernels under M7B_HOME/cache/kernels."""
    cache_root = store.ensure_dir(store.compile_cache_dir) if mode == "compile" else None
    kernel_root = refuse_links_below(store.home, store.kernel_cache_dir)  # made on first use, never through a link
    return prepare_decode(model, mode, needed, cache_root, cpu_kernels, kernel_root=kernel_root)


def complete(
    runtime: Runtime,
    prompt: str,
    config: GenerationConfig | None = None,
    *,
    decode: str = "auto",
    cpu_kernels: str = "auto",
    store: Store | None = None,
    on_prepared: Callable[[PreparedDecode], None] | None = None,
    on_text: Callable[[str], None] | None = None,
) -> Completion:
    """Continue `prompt` (BOS added) as `m7b run` does: the same token ids for the same release, config and seed.

    `decode`: auto (compiled with CUDA graphs on CUDA, eager on the CPU), eager, compile or graph; `cpu_kernels`:
    auto, m7b or torch (the eager CPU step's kernels). `on_prepared` sees the decode step once it is ready, before
    the prompt is read; `on_text` each piece of text as its token is sampled (and the last piece at the end).
    `store` (default `Store.from_env()`) holds the compile and kernel caches.
    """
    config = config or GenerationConfig()
    config.validate(runtime.args.max_positions)
    store = store or Store.from_env()
    mode = resolve_mode(decode, runtime.device)
    ids = runtime.tokenizer.encode(prompt)
    # before any cache or compiled step is made for them
    check_positions(len(ids), config.max_tokens, runtime.args.max_positions)
    prepared = prepare_step(runtime.model, mode, len(ids) + config.max_tokens, store, cpu_kernels)
    if on_prepared is not None:
        on_prepared(prepared)
    stream = runtime.tokenizer.stream()
    pieces: list[str] = []
    first_token_at: list[float] = []

    def on_token(token: int) -> None:
        if not first_token_at:
            first_token_at.append(time.time())
        text = stream.push(token)
        pieces.append(text)
        if text and on_text is not None:
            on_text(text)

    result = generate(
        runtime.model,
        ids,
        config,
        eos_id=runtime.tokenizer.eos_id,
        on_token=on_token,
        decode_fn=prepared.fn,
        max_seq_len=prepared.max_seq_len,
    )
    tail = stream.flush()
    pieces.append(tail)
    if on_text is not None:
        on_text(tail)
    return Completion(
        prompt=prompt,
        text="".join(pieces),
        prompt_token_ids=result.prompt_tokens,
        token_ids=result.tokens,
        result=result,
        prepared=prepared,
        first_token_at=first_token_at[0] if first_token_at else None,
    )
