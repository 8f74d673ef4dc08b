"""CPU decode benchmark: m7b's runtime (the code `m7b run` uses) against transformers' `generate`, side by side.

The model is the issue's: dim 512, 8 layers, 8 heads, 2 kv heads, head_dim 64, hidden 1536, vocab 32000,
window 256 (the `bench-cpu` synthetic preset, random weights), fp32, 2 threads, greedy, 256 new tokens.
Anchor: transformers ~98 tok/s on the issue's machine; target m7b >= 2x.

    python bench/run_cpu.py [--release DIR] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from m7b.runtime.generate import GenerationConfig, generate
from m7b.runtime.loader import load_runtime
from m7b.runtime.weights import load_state_dict
from m7b.synth import synthesize

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "runtime"))
from hf_reference import hf_model  # noqa: E402  (the same HF conversion the parity tests use)

PROMPT = "The torrent arrived without a blog post, four files and a magnet link. What the weights say is"
NEW_TOKENS = 256
ANCHOR_HF_TOK_S = 98.0


class _FirstTokenClock:
    """A transformers streamer that records when the first new token appears."""

    def __init__(self) -> None:
        self.calls = 0
        self.first: float | None = None

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2:  # the first call carries the prompt
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def weight_stream_floor_s(model) -> float:
    """Seconds for the matrix-vector products of one decode step alone (every weight matrix but the embedding
    table, read once): what any fp32 implementation pays per token on this machine, before anything else."""
    mats = []
    for layer in model.layers:
        a, f = layer.attention, layer.feed_forward
        mats += [a.wq.weight, a.wk.weight, a.wv.weight, a.wo.weight, f.w1.weight, f.w3.weight, f.w2.weight]
    mats.append(model.output.weight)
    vecs = {m.shape[1]: torch.randn(1, m.shape[1]) for m in mats}
    best = float("inf")
    with torch.inference_mode():
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(50):
                for m in mats:
                    torch.nn.functional.linear(vecs[m.shape[1]], m)
            best = min(best, (time.perf_counter() - start) / 50)
    return best


def bench_m7b(release: Path, repeats: int) -> dict:
    rt = load_runtime(release, torch.device("cpu"), torch.float32)
    floor = weight_stream_floor_s(rt.model)
    prompt = rt.tokenizer.encode(PROMPT)
    config = GenerationConfig(max_tokens=NEW_TOKENS, stop_at_eos=False)
    generate(rt.model, prompt, GenerationConfig(max_tokens=16, stop_at_eos=False))  # warm-up
    runs = [generate(rt.model, prompt, config) for _ in range(repeats)]
    best = max(runs, key=lambda r: r.decode_tok_s)
    return {
        "decode_tok_s": best.decode_tok_s,
        "all_decode_tok_s": [r.decode_tok_s for r in runs],
        "ttft_s": best.ttft_s,
        "tokens": best.tokens,
        "prompt": prompt,
        "floor_tok_s": 1 / floor,
        "weight_bytes_per_token": sum(p.nbytes for p in rt.model.parameters()) - rt.model.tok_embeddings.weight.nbytes,
    }


def bench_hf(release: Path, prompt: list[int], repeats: int) -> dict:
    rt_args = load_runtime(release, torch.device("cpu"), torch.float32).args
    state, _ = load_state_dict(release)
    model = hf_model(state, rt_args, torch.float32, attn_implementation="sdpa")
    ids = torch.tensor([prompt])
    kwargs = {"do_sample": False, "max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "pad_token_id": 0}
    rates, tokens = [], []
    with torch.inference_mode():
        model.generate(ids, do_sample=False, max_new_tokens=16, pad_token_id=0)  # warm-up
        for _ in range(repeats):
            clock = _FirstTokenClock()
            out = model.generate(ids, streamer=clock, **kwargs)
            end = time.perf_counter()
            n = out.shape[1] - ids.shape[1]
            rates.append((n - 1) / (end - clock.first))
            tokens = out[0, ids.shape[1] :].tolist()
    return {"decode_tok_s": max(rates), "all_decode_tok_s": rates, "tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", type=Path, help="a bench-cpu release folder (default: synthesize one)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    with tempfile.TemporaryDirectory() as tmp:
        release = opts.release or synthesize(Path(tmp) / "bench-cpu", "bench-cpu", seed=0).path
        ours = bench_m7b(release, opts.repeats)
        theirs = bench_hf(release, ours["prompt"], opts.repeats)
    same = ours["tokens"] == theirs["tokens"]
    doc = {
        "device": "cpu",
        "threads": opts.threads,
        "dtype": "float32",
        "new_tokens": NEW_TOKENS,
        "m7b_decode_tok_s": round(ours["decode_tok_s"], 1),
        "m7b_runs": [round(x, 1) for x in ours["all_decode_tok_s"]],
        "m7b_ttft_s": round(ours["ttft_s"], 4),
        "transformers_decode_tok_s": round(theirs["decode_tok_s"], 1),
        "transformers_runs": [round(x, 1) for x in theirs["all_decode_tok_s"]],
        "ratio": round(ours["decode_tok_s"] / theirs["decode_tok_s"], 2),
        "ratio_vs_anchor_98": round(ours["decode_tok_s"] / ANCHOR_HF_TOK_S, 2),
        "weight_stream_floor_tok_s": round(ours["floor_tok_s"], 1),
        "fraction_of_floor": round(ours["decode_tok_s"] / ours["floor_tok_s"], 2),
        "fp32_weight_mb_per_token": round(ours["weight_bytes_per_token"] / 1e6, 1),
        "greedy_tokens_identical": same,
        "torch": torch.__version__,
    }
    if opts.json:
        print(json.dumps(doc))
        return
    print(
        f"CPU, {opts.threads} threads, fp32, greedy, {NEW_TOKENS} new tokens, bench-cpu model (best of {opts.repeats})"
    )
    print(
        f"  m7b runtime        {doc['m7b_decode_tok_s']:8.1f} tok/s   runs {doc['m7b_runs']}  TTFT {doc['m7b_ttft_s']}s"
    )
    print(f"  transformers       {doc['transformers_decode_tok_s']:8.1f} tok/s   runs {doc['transformers_runs']}")
    print(
        f"  ratio              {doc['ratio']:8.2f}x  (target >= 2x; vs the 98 tok/s anchor: "
        f"{doc['ratio_vs_anchor_98']}x)"
    )
    print(
        f"  weight-stream floor {doc['weight_stream_floor_tok_s']:7.1f} tok/s  "
        f"(the {doc['fp32_weight_mb_per_token']} MB of fp32 matrices one token reads, as bare "
        f"matrix-vector products): m7b at {100 * doc['fraction_of_floor']:.0f}% of it"
    )
    print(f"  greedy tokens identical: {same}")


if __name__ == "__main__":
    main()
