"""The smoke-generation battery: properties any release's runtime must have, checked on that release.

Same seed twice gives the same tokens; logits are finite; chunked prefill equals a single pass; decoding past the
window with the rolling cache equals a full recompute under the band mask; the cache stops growing at W tokens;
and, given fast decode paths (the compiled step, a CUDA graph), their teacher-forced logits against the eager step
and against transformers (when installed) past the window. The GPU-only paths (the CUDA-graph step) are skipped
entries, with the reason, on other devices. The decode tokens/s is a reported figure, not a check.

Without a window (Mixtral's full attention) the checks run over `smoke_span` positions instead of W, the cache is
checked to hold every position of the run, and a mixture of experts adds routing determinism and logit parity
with transformers' MixtralForCausalLM on the same weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from m7b.progress import ProgressCallback, ProgressEvent, ignore_progress

from .fast_decode import GPU_ONLY_MODES
from .generate import DecodeFn, GenerationConfig, decode_one_token, generate, prefill
from .model import Transformer
from .sampling import SamplingConfig
from .tokenizer import Tokenizer

SMOKE_PROMPT = "The four files of the release were checked one by one, and then"
# Logits may differ by this much, relative to the largest logit (at least 1): summation order differs between a
# chunk and a single pass, and between a decode step and a full recompute.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}
# A fast decode path (other kernels, fused and reordered sums) or another implementation, against the eager step.
PATH_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 2e-2, torch.float16: 1e-2}
PAST_WINDOW = 64  # teacher-forced positions past the window the path check covers
FULL_ATTENTION_SPAN = 64  # positions standing for W in the checks of a model without a window (W: 32,768)


def smoke_span(model: Transformer) -> int:
    """The W of the checks: the model's window, or FULL_ATTENTION_SPAN positions when it attends to everything."""
    return model.window if model.args.sliding_window is not None else min(model.window, FULL_ATTENTION_SPAN)


@dataclass(frozen=True)
class SmokeCheck:
    name: str
    passed: bool  # False for a skipped check too: it did not run
    detail: str
    value: float | None = None
    skipped: str = ""  # why the check did not run here (it neither passes nor fails the battery)


@dataclass(frozen=True)
class SmokeFigure:
    """A measured figure the battery reports beside its checks (nothing passes or fails on it)."""

    name: str
    value: float
    unit: str
    detail: str


@dataclass
class SmokeReport:
    window: int
    checks: list[SmokeCheck]
    decode_tok_s: float
    figures: list[SmokeFigure] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failed

    @property
    def failed(self) -> list[SmokeCheck]:
        return [c for c in self.checks if not c.passed and not c.skipped]

    @property
    def skipped(self) -> list[SmokeCheck]:
        return [c for c in self.checks if c.skipped]


def synthetic_ids(n: int, vocab_size: int, seed: int, device: torch.device) -> torch.Tensor:
    """(1, n) token ids: BOS, then ordinary pieces (ids past the 3 control tokens) from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab_size, (1, n), generator=gen)
    ids[0, 0] = 1
    return ids.to(device)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    diff = (a.float() - b.float()).abs().max().item()
    scale = max(1.0, b.float().abs().max().item())
    return diff, diff / scale


def _all_logits(model: Transformer, ids: torch.Tensor, chunk: int, capacity: int | None = None) -> torch.Tensor:
    """Logits at every position of ids, fed in chunks of `chunk` through fresh caches."""
    n = ids.shape[1]
    model.setup_caches(1, n, capacity=capacity)
    outs = []
    for begin in range(0, n, chunk):
        pos = torch.arange(begin, min(begin + chunk, n), device=ids.device)
        outs.append(model(ids[:, begin : begin + chunk], pos)[0])
    return torch.cat(outs)


def check_determinism(model: Transformer, tokenizer: Tokenizer, seed: int) -> SmokeCheck:
    prompt = tokenizer.encode(SMOKE_PROMPT)
    config = GenerationConfig(
        max_tokens=16, sampling=SamplingConfig(temperature=0.8, top_p=0.95, seed=seed), stop_at_eos=False
    )
    first = generate(model, prompt, config).tokens
    second = generate(model, prompt, config).tokens
    same = first == second
    return SmokeCheck(
        "same seed twice gives the same tokens",
        same,
        f"seed {seed}, temperature 0.8, top-p 0.95, {len(first)} tokens: "
        + ("identical" if same else f"differ: {first} vs {second}"),
    )


def check_finite(model: Transformer, tokenizer: Tokenizer) -> SmokeCheck:
    ids = torch.tensor([tokenizer.encode(SMOKE_PROMPT)], device=model.output.weight.device)
    logits = _all_logits(model, ids, model.window)
    bad = int((~torch.isfinite(logits)).sum().item())
    return SmokeCheck(
        "logits are finite",
        bad == 0,
        f"{logits.numel():,} logits over {ids.shape[1]} prompt positions, {bad} not finite",
    )


def check_chunked_prefill(model: Transformer, dtype: torch.dtype, seed: int) -> SmokeCheck:
    w = smoke_span(model)
    n = 2 * w + 3
    ids = synthetic_ids(n, model.args.vocab_size, seed, model.output.weight.device)
    single = _all_logits(model, ids, n)
    chunk = max(1, w // 2 + 1) if w > 2 else w
    chunked = _all_logits(model, ids, chunk)
    diff, rel = _max_diff(chunked, single)
    ok = rel <= TOLERANCE[dtype]
    return SmokeCheck(
        "chunked prefill equals a single pass",
        ok,
        f"{n} tokens (W={w}) in chunks of {chunk} vs one pass: max |diff| {diff:.2e} "
        f"({rel:.1e} of the largest logit, tolerance {TOLERANCE[dtype]:.0e})",
        rel,
    )


def check_rolling_cache(model: Transformer, dtype: torch.dtype, seed: int) -> tuple[SmokeCheck, float]:
    w = smoke_span(model)
    past = min(w // 4, 32)
    prompt_len = max(1, w - past)
    steps = past + min(w // 2, 32) + 1
    ids = synthetic_ids(prompt_len, model.args.vocab_size, seed, model.output.weight.device)
    total = prompt_len + steps
    model.setup_caches(1, total)
    device = ids.device
    step_logits = []
    with torch.inference_mode():
        logits = prefill(model, ids, 0, w)
        token = torch.argmax(logits, dim=-1, keepdim=True)
        seq = [ids, token]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for i in range(steps - 1):
            logits = decode_one_token(model, token, torch.tensor([prompt_len + i], device=device))
            step_logits.append(logits[0])
            token = torch.argmax(logits, dim=-1, keepdim=True)
            seq.append(token)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
    full_ids = torch.cat(seq, dim=1)[:, :-1]
    # Every position kept (capacity = length), one pass: the band mask alone limits what each query sees.
    full = _all_logits(model, full_ids, full_ids.shape[1], capacity=full_ids.shape[1])[prompt_len:]
    rolled = torch.stack(step_logits)
    diff, rel = _max_diff(rolled, full)
    ok = rel <= TOLERANCE[dtype]
    check = SmokeCheck(
        "rolling cache equals a full recompute past the window",
        ok,
        f"prompt {prompt_len} + {steps - 1} decode steps to position {total - 2} (W={w}, cache "
        f"{min(w, total)} slots) vs one band-masked pass: max |diff| {diff:.2e} ({rel:.1e} of the "
        f"largest logit)",
        rel,
    )
    return check, (steps - 1) / elapsed if elapsed > 0 else 0.0


def check_cache_memory(model: Transformer, seed: int) -> SmokeCheck:
    if model.args.sliding_window is None:
        return check_full_cache(model, seed)
    w = model.window
    ids = synthetic_ids(4 * w, model.args.vocab_size, seed, model.output.weight.device)
    model.setup_caches(1, 4 * w + 1)
    caches = [layer.attention.kv_cache for layer in model.blocks]
    pointers = [c.k_cache.data_ptr() for c in caches if c is not None]
    with torch.inference_mode():
        prefill(model, ids[:, :w], 0, w)
        at_w = model.cache_nbytes()
        prefill(model, ids[:, w:], w, w)
        at_4w = model.cache_nbytes()
    same_buffers = pointers == [c.k_cache.data_ptr() for c in caches if c is not None] and len(pointers) == len(caches)
    a = model.args
    expected = a.n_layers * 2 * a.n_kv_heads * w * a.head_dim * model.output.weight.element_size()
    ok = at_w == at_4w == expected and same_buffers
    return SmokeCheck(
        "cache memory constant after W tokens",
        ok,
        f"{at_w:,} bytes after W={w} tokens, {at_4w:,} after {4 * w} (expected {expected:,}: "
        f"{a.n_layers} layers x K,V x {a.n_kv_heads} kv heads x {w} slots x {a.head_dim})"
        + ("" if same_buffers else "; the buffers were reallocated"),
    )


@torch.inference_mode()
def teacher_forced_logits(model: Transformer, ids: torch.Tensor, prompt_len: int, fn: DecodeFn) -> torch.Tensor:
    """Logits (positions, V) of the decode steps at positions prompt_len … n-1, each fed the given id (not the
    sampled one), after a prefill of the first `prompt_len` ids. The caches must already be set up."""
    model.reset_caches()
    prefill(model, ids[:, :prompt_len], 0, model.window)
    device = ids.device
    out = []
    for pos in range(prompt_len, ids.shape[1]):
        logits = fn(model, ids[:, pos : pos + 1], torch.tensor([pos], dtype=torch.long, device=device))
        out.append(logits[0].float().clone())
    return torch.stack(out)


def transformers_logits(model: Transformer, ids: torch.Tensor, start: int) -> torch.Tensor | None:
    """Logits at positions start … n-1 from transformers' MistralForCausalLM (sdpa) on the same tensors, in one
    pass; None when transformers is not installed."""
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        return None
    from .hf_twin import hf_model

    state = {k: v for k, v in model.state_dict().items() if not k.startswith(("slot_pos", "freqs"))}
    hf = hf_model(state, model.args, model.output.weight.dtype, attn_implementation="sdpa")
    with torch.inference_mode():
        logits = hf(ids).logits[0, start:].float()
    del hf
    return logits


def check_decode_paths(
    model: Transformer, paths: dict[str, DecodeFn], dtype: torch.dtype, seed: int, max_seq_len: int | None = None
) -> list[SmokeCheck]:
    """Each fast decode path, and transformers when installed, against the eager step: teacher-forced logits over
    the last few positions before the window and PAST_WINDOW positions after it. `max_seq_len`: the cache size the
    paths were prepared for (their static shapes)."""
    w = smoke_span(model)
    prompt_len = max(1, w - 8)
    total = w + PAST_WINDOW
    ids = synthetic_ids(total, model.args.vocab_size, seed, model.output.weight.device)
    if model.max_seq_len < total or (max_seq_len and model.max_seq_len != max_seq_len):
        model.setup_caches(1, max(total, max_seq_len or 0))
    eager = teacher_forced_logits(model, ids, prompt_len, decode_one_token)
    tol = PATH_TOLERANCE.get(dtype, 2e-2)
    where = f"positions {prompt_len}-{total - 1} (W={w}, {PAST_WINDOW} past it), teacher-forced"
    checks = []
    for name, fn in paths.items():
        diff, rel = _max_diff(teacher_forced_logits(model, ids, prompt_len, fn), eager)
        checks.append(
            SmokeCheck(
                f"{name} decode step equals eager",
                rel <= tol,
                f"{where}: max |diff| {diff:.2e} ({rel:.1e} of the largest logit, tolerance {tol:.0e})",
                rel,
            )
        )
    model.reset_caches()
    reference = transformers_logits(model, ids, prompt_len)  # the step at pos gives the one-pass logits at pos
    if reference is not None:
        diff, rel = _max_diff(eager, reference)
        checks.append(
            SmokeCheck(
                "eager decode step equals transformers",
                rel <= tol,
                f"{where}, vs {_twin_name(model)} (sdpa) in one pass: max |diff| {diff:.2e} ({rel:.1e} of the "
                f"largest logit, tolerance {tol:.0e})",
                rel,
            )
        )
    return checks


def skipped_gpu_paths(device: torch.device, paths: dict[str, DecodeFn]) -> list[SmokeCheck]:
    """A skipped entry, with the reason, for each GPU-only decode path (`fast_decode.GPU_ONLY_MODES`) not checked
    because `device` is not a GPU."""
    if device.type == "cuda":
        return []
    return [
        SmokeCheck(
            f"{mode} decode step equals eager",
            False,
            f"GPU-only: the {mode} decode step replays a captured CUDA graph; this run is on {device}",
            skipped=f"GPU-only, this run is on {device}",
        )
        for mode in GPU_ONLY_MODES
        if mode not in paths
    ]


def run_smoke(
    model: Transformer,
    tokenizer: Tokenizer,
    dtype: torch.dtype,
    seed: int = 0,
    progress: ProgressCallback = ignore_progress,
    decode_paths: dict[str, DecodeFn] | None = None,
    paths_max_seq_len: int | None = None,
) -> SmokeReport:
    """Run every check (none stops the others) and return the report. `decode_paths`: fast decode steps to check
    against the eager one (and transformers), prepared for caches of `paths_max_seq_len` positions."""
    checks = skipped_gpu_paths(model.output.weight.device, decode_paths or {})
    rate = 0.0
    steps: list[tuple[str, Callable[[], SmokeCheck | list[SmokeCheck]]]] = [
        ("determinism", lambda: check_determinism(model, tokenizer, seed)),
        ("finite logits", lambda: check_finite(model, tokenizer)),
        ("chunked prefill", lambda: check_chunked_prefill(model, dtype, seed)),
        ("rolling cache", lambda: _rolling()),
        ("cache memory", lambda: check_cache_memory(model, seed)),
    ]
    if decode_paths:
        steps.insert(
            0, ("decode paths", lambda: check_decode_paths(model, decode_paths, dtype, seed, paths_max_seq_len))
        )
    if model.args.moe is not None:
        steps += [
            ("routing", lambda: check_routing_determinism(model, seed)),
            ("transformers", lambda: check_moe_parity(model, dtype, seed)),
        ]

    def _rolling() -> SmokeCheck:
        nonlocal rate
        check, rate = check_rolling_cache(model, dtype, seed)
        return check

    with torch.inference_mode():
        for i, (name, step) in enumerate(steps):
            progress(ProgressEvent("smoke", i, len(steps), item=name, unit="checks"))
            found = step()
            checks.extend(found if isinstance(found, list) else [found])
        progress(ProgressEvent("smoke", len(steps), len(steps), item="done", unit="checks"))
    figure = SmokeFigure(
        "decode tokens/s", rate, "tok/s", "greedy, batch 1, the eager step over the rolling-cache check's decode steps"
    )
    return SmokeReport(window=model.window, checks=checks, decode_tok_s=rate, figures=[figure])


def _twin_name(model: Transformer) -> str:
    return "MistralForCausalLM" if model.args.moe is None else "MixtralForCausalLM"


def check_full_cache(model: Transformer, seed: int) -> SmokeCheck:
    """Full attention: the cache holds every position of the run (sized to it), in the same buffers throughout."""
    w = smoke_span(model)
    n = 4 * w
    ids = synthetic_ids(n, model.args.vocab_size, seed, model.output.weight.device)
    model.setup_caches(1, n)
    caches = [layer.attention.kv_cache for layer in model.blocks]
    pointers = [c.k_cache.data_ptr() for c in caches if c is not None]
    with torch.inference_mode():
        prefill(model, ids, 0, w)
    a = model.args
    expected = a.n_layers * 2 * a.n_kv_heads * n * a.head_dim * model.output.weight.element_size()
    kept = int((model.slot_pos >= 0).sum().item())
    same = pointers == [c.k_cache.data_ptr() for c in caches if c is not None] and len(pointers) == len(caches)
    ok = model.capacity == n and kept == n and model.cache_nbytes() == expected and same
    return SmokeCheck(
        "cache holds every position (full attention)",
        ok,
        f"{n} positions in a cache of {model.capacity} slots ({kept} filled, {model.cache_nbytes():,} bytes, "
        f"expected {expected:,})" + ("" if same else "; the buffers were reallocated"),
    )


def check_routing_determinism(model: Transformer, seed: int) -> SmokeCheck:
    """The same tokens route to the same experts with bitwise-equal logits, run twice, in one pass and in chunks."""
    from .moe import MoeFeedForward

    w = smoke_span(model)
    ids = synthetic_ids(2 * w, model.args.vocab_size, seed, model.output.weight.device)
    chosen: list[torch.Tensor] = []

    def record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        assert isinstance(module, MoeFeedForward)
        flat = inputs[0].reshape(-1, inputs[0].shape[-1])
        chosen.append(torch.topk(module.gate(flat), module.num_experts_per_tok, dim=-1).indices.cpu())

    ffns = [layer.feed_forward for layer in model.blocks if isinstance(layer.feed_forward, MoeFeedForward)]
    hooks = [ffn.register_forward_hook(record) for ffn in ffns]
    try:
        first = _all_logits(model, ids, 2 * w)
        first_routes = [c.clone() for c in chosen]
        chosen.clear()
        second = _all_logits(model, ids, 2 * w)
    finally:
        for hook in hooks:
            hook.remove()
    same_routes = len(first_routes) == len(chosen) and all(
        torch.equal(a, b) for a, b in zip(first_routes, chosen, strict=True)
    )
    same = same_routes and torch.equal(first, second)
    used = len({int(e) for c in first_routes for e in c.flatten()})
    return SmokeCheck(
        "routing is deterministic",
        same,
        f"{2 * w} tokens through {len(ffns)} layers twice ({model.args.moe.describe() if model.args.moe else ''}, "
        f"{used} experts chosen somewhere): " + ("the same experts, bitwise-equal logits" if same else "differ"),
    )


def check_moe_parity(model: Transformer, dtype: torch.dtype, seed: int) -> SmokeCheck:
    """The model's logits against transformers' MixtralForCausalLM on the same weights, one pass over 2 spans."""
    w = smoke_span(model)
    ids = synthetic_ids(2 * w, model.args.vocab_size, seed, model.output.weight.device)
    ours = _all_logits(model, ids, w).float()
    reference = transformers_logits(model, ids, 0)
    tol = PATH_TOLERANCE.get(dtype, 2e-2)
    if reference is None:
        return SmokeCheck(
            "logits equal transformers' Mixtral", False, "transformers is not installed", skipped="no transformers"
        )
    diff, rel = _max_diff(ours, reference)
    return SmokeCheck(
        "logits equal transformers' Mixtral",
        rel <= tol,
        f"{2 * w} positions in chunks of {w} vs MixtralForCausalLM (sdpa) in one pass: max |diff| {diff:.2e} "
        f"({rel:.1e} of the largest logit, tolerance {tol:.0e})",
        rel,
    )
