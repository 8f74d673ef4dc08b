"""The CPU benchmark's mixture-of-experts row (called from bench/run_cpu.py): m7b's default decode (the checkpoint's
bf16 on m7b's CPU kernels, reading only the chosen experts) against transformers' MixtralForCausalLM `generate` on
the same weights (its faster of float32 and bfloat16), and m7b against the active-bytes floor: the bytes one token
reads (attention, norms, gates and the 2 chosen experts of each layer, the output matrix) over the read bandwidth
measured around each round.

Model: the `mixtral-small` preset (dim 512, 4 layers, 8 heads / 2 kv heads, hidden 1536, 8 experts, 2 per token,
no window; 0.22 GB, 0.11 GB active a token), greedy, NEW_TOKENS new tokens.
Targets: m7b default >= 2x transformers' faster dtype; m7b >= 85% of the active-bytes floor.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from run_cpu import NEW_TOKENS, PROMPT, Contender, _FirstTokenClock

from m7b.runtime.fast_decode import prepare_decode
from m7b.runtime.generate import GenerationConfig, generate
from m7b.runtime.hf_twin import hf_model
from m7b.runtime.loader import load_runtime
from m7b.runtime.weights import load_state_dict
from m7b.synth import synthesize

PRESET = "mixtral-small"
TARGET_RATIO = 2.0
TARGET_FLOOR_FRACTION = 0.85


def active_bytes_per_token(release: Path) -> int:
    """Bytes one decode token reads: every weight but the embedding table (one row of it), with only
    num_experts_per_tok experts per layer, in the checkpoint's bf16."""
    args = load_runtime(release, torch.device("cpu")).args
    return (args.active_parameter_count() - args.vocab_size * args.dim) * 2


def m7b_contender(release: Path, kernels: Path) -> Contender:
    rt = load_runtime(release, torch.device("cpu"), None)  # the default: the checkpoint's dtype
    prompt = rt.tokenizer.encode(PROMPT)
    prepared = prepare_decode(rt.model, "eager", len(prompt) + NEW_TOKENS, None, "auto", kernels)
    step = {"decode_fn": prepared.fn, "max_seq_len": prepared.max_seq_len}
    config = GenerationConfig(max_tokens=NEW_TOKENS, stop_at_eos=False)
    generate(rt.model, prompt, GenerationConfig(max_tokens=16, stop_at_eos=False), **step)  # warm-up

    def run_once() -> tuple[float, float, list[int]]:
        result = generate(rt.model, prompt, config, **step)
        return result.decode_tok_s, result.ttft_s, result.tokens

    info = {"dtype": str(rt.dtype).removeprefix("torch."), "cpu_kernels": prepared.cpu_kernels, "prompt": prompt}
    return Contender(info, run_once)


def hf_contender(release: Path, dtype: torch.dtype, prompt: list[int]) -> Contender:
    state, _ = load_state_dict(release)
    args = load_runtime(release, torch.device("cpu")).args
    model = hf_model(state, args, dtype, attn_implementation="sdpa")
    ids = torch.tensor([prompt])
    kwargs = {"do_sample": False, "max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "pad_token_id": 0}
    with torch.inference_mode():
        model.generate(ids, do_sample=False, max_new_tokens=16, pad_token_id=0)  # warm-up

    def run_once() -> tuple[float, float, list[int]]:
        import time

        with torch.inference_mode():
            clock = _FirstTokenClock()
            start = time.perf_counter()
            out = model.generate(ids, streamer=clock, **kwargs)
            end = time.perf_counter()
        assert clock.first is not None
        n = out.shape[1] - ids.shape[1]
        return (n - 1) / (end - clock.first), clock.first - start, out[0, ids.shape[1] :].tolist()

    return Contender({"dtype": str(dtype).removeprefix("torch.")}, run_once)


def run_moe(repeats: int, kernels: Path, bandwidth: Callable[[], float], release: Path | None = None) -> dict:
    """The MoE row: interleaved rounds (each contender once per round, best round kept). The machine's bandwidth
    drifts (31-63 GB/s within minutes on the Zen 4 of bench/README.md), so each m7b round is sandwiched between two
    bandwidth readings and its floor uses the higher of the two, as the 7B row's; the verdict takes the round with
    the best share of its own floor, and the median share is reported beside it."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = release or synthesize(Path(tmp) / PRESET, PRESET, seed=0).path
        active = active_bytes_per_token(folder)
        ours = m7b_contender(folder, kernels)
        theirs = {
            name: hf_contender(folder, dt, ours.info["prompt"])
            for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16))
        }
        readings: list[tuple[float, float]] = []
        for _ in range(repeats):
            before = bandwidth()
            ours.measure()
            readings.append((before, bandwidth()))
            for contender in theirs.values():
                contender.measure()
    fastest = max(theirs, key=lambda k: theirs[k].best)
    shares = [rate / (max(pair) / active) for rate, pair in zip(ours.rates, readings, strict=True)]
    best = max(range(repeats), key=lambda i: shares[i])
    floor = max(readings[best]) / active
    return {
        "preset": PRESET,
        "m7b_dtype": ours.info["dtype"],
        "m7b_cpu_kernels": ours.info["cpu_kernels"],
        "m7b_decode_tok_s": round(ours.best, 1),
        "m7b_runs": [round(r, 1) for r in ours.rates],
        "transformers": {
            k: {"decode_tok_s": round(v.best, 1), "runs": [round(r, 1) for r in v.rates]} for k, v in theirs.items()
        },
        "transformers_fastest_dtype": fastest,
        "ratio": round(ours.best / theirs[fastest].best, 2),
        "active_bytes_per_token": active,
        "read_bandwidth_gb_s": [[round(b / 1e9, 2) for b in pair] for pair in readings],
        "active_floor_tok_s": round(floor, 1),
        "floor_round_tok_s": round(ours.rates[best], 1),
        "fraction_of_floor": round(shares[best], 3),
        "fraction_of_floor_runs": [round(f, 3) for f in shares],
        "median_fraction_of_floor": round(statistics.median(shares), 3),
        "greedy_tokens_identical_bfloat16": ours.tokens == theirs["bfloat16"].tokens,
    }


def print_moe(doc: dict, repeats: int) -> None:
    ok = "met" if doc["ratio"] >= TARGET_RATIO else "NOT met"
    floor_ok = "met" if doc["fraction_of_floor"] >= TARGET_FLOOR_FRACTION else "NOT met"
    print(f"mixture of experts: {doc['preset']} (8 experts, 2 per token, no window), best of {repeats}")
    print(
        f"  m7b default ({doc['m7b_dtype']}, {doc['m7b_cpu_kernels']})  {doc['m7b_decode_tok_s']:8.1f} tok/s  "
        f"runs {doc['m7b_runs']}"
    )
    for name, fig in doc["transformers"].items():
        print(f"  transformers Mixtral {name:8s} {fig['decode_tok_s']:8.1f} tok/s  runs {fig['runs']}")
    print(
        f"  ratio (default / transformers {doc['transformers_fastest_dtype']}) {doc['ratio']:.2f}x: target >= "
        f"{TARGET_RATIO}x: {ok}"
    )
    rounds = [round(100 * f) for f in doc["fraction_of_floor_runs"]]
    print(
        f"  active-bytes floor {doc['active_floor_tok_s']:.1f} tok/s ({doc['active_bytes_per_token'] / 1e6:.1f} MB a "
        f"token; each round's floor from the higher of its own readings {doc['read_bandwidth_gb_s']} GB/s): the best "
        f"round, {doc['floor_round_tok_s']:.1f} tok/s, at {100 * doc['fraction_of_floor']:.0f}%: target >= "
        f"{100 * TARGET_FLOOR_FRACTION:.0f}%: {floor_ok} (rounds {rounds}%, "
        f"median {100 * doc['median_fraction_of_floor']:.0f}%)"
    )
    print(f"  greedy tokens identical to transformers (bfloat16): {doc['greedy_tokens_identical_bfloat16']}")
