"""GPU benchmark: m7b's runtime on a Mistral-7B-shaped model against the memory-bandwidth roofline and against
transformers' `generate`, in one script that finishes in under 8 minutes on an H100 or H200.

- the model: the real params.json (dim 4096, 32 layers, 32 heads, 8 kv heads, hidden 14336, window 4096,
  rope_theta 10000), random bf16 weights created on the GPU (no download, no 14.5 GB file);
- decode: batch 1, greedy, 256 new tokens; static cache buffers (the rolling cache is allocated once) and the
  decode step compiled with `torch.compile(mode="reduce-overhead", fullgraph=True)` (CUDA graphs); if compiling
  fails, a hand-captured CUDA graph, then eager; the mode used is printed;
- roofline: bytes read per decoded token (every weight but the embedding table, ~14.2 GB, plus the KV cache)
  over the card's bandwidth (H100 SXM 3.35 TB/s: ~236 tok/s; H200 4.8 TB/s: ~338 tok/s); target >= 80%;
- transformers: MistralForCausalLM holding the same tensors, `generate` (sdpa, its default dynamic cache);
  target m7b >= 3x;
- time to first token for a 4,096-token prompt (one chunk = the window), and peak GPU memory.

    python bench/run_gpu.py [--json-out FILE] [--decode compile|graph|eager] [--skip-hf]
    python bench/run_gpu.py --dry-run     # the same code on the CPU with a small model: checks the script only
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from m7b.runtime.args import ModelArgs
from m7b.runtime.fast_decode import compiled_decode, cuda_graph_decode
from m7b.runtime.generate import GenerationConfig, decode_one_token, generate, prefill
from m7b.runtime.model import Transformer
from m7b.synth import PRESETS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "runtime"))

BUDGET_S = 7 * 60  # stop starting new phases after this; the whole script must end within 8 minutes
# Peak HBM bandwidth by card (bytes/s), from the vendors' data sheets.
BANDWIDTH = {"H200": 4.8e12, "H100 PCIe": 2.0e12, "H100 NVL": 3.9e12, "H100": 3.35e12, "A100": 2.04e12}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def card_bandwidth(device: torch.device, override_gbs: float | None) -> tuple[str, float | None]:
    if override_gbs:
        return "given", override_gbs * 1e9
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    for key, bw in BANDWIDTH.items():  # ordered: the more specific names first
        if key in name:
            return name, bw
    return name, None


@torch.no_grad()
def random_model(args: ModelArgs, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Transformer:
    """A Transformer with random weights made directly on `device` in `dtype` (never a float32 copy)."""
    with torch.device("meta"):
        model = Transformer(args)
    model = model.to(dtype=dtype).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() == 1:
            p.fill_(1.0)
        elif name == "tok_embeddings.weight":
            p.normal_(0.0, 1.0, generator=gen)
        else:
            p.normal_(0.0, 1.0 / math.sqrt(p.shape[1]), generator=gen)
    model.requires_grad_(False)
    return model.eval()


def make_decoder(
    mode: str, model: Transformer, device: torch.device, prompt: list[int], max_seq_len: int
) -> tuple[str, Callable, float]:
    """The decode step in the first mode that works (compile → graph → eager) and its warm-up seconds."""
    order = {"compile": ["compile", "graph", "eager"], "graph": ["graph", "eager"], "eager": ["eager"]}[mode]
    warm = GenerationConfig(max_tokens=8, stop_at_eos=False)
    for m in order:
        start = time.perf_counter()
        try:
            if m == "compile":  # on the CPU (--dry-run) plain torch.compile, to check the graph has no breaks
                fn = (
                    compiled_decode(device)
                    if device.type == "cuda"
                    else torch.compile(decode_one_token, fullgraph=True)
                )
            elif m == "graph":
                fn = cuda_graph_decode(model, device)
            else:
                fn = decode_one_token
            for _ in range(2):  # compile, then record/replay the graph
                generate(model, prompt, warm, decode_fn=fn, max_seq_len=max_seq_len)
            return m, fn, time.perf_counter() - start
        except Exception as exc:  # noqa: BLE001 — report and fall back to the next mode
            log(f"decode mode {m} failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); falling back")
            torch._dynamo.reset()
    raise RuntimeError("no decode mode worked")


def bench_decode(
    model: Transformer, device: torch.device, prompt: list[int], new_tokens: int, mode: str, repeats: int
) -> dict:
    max_seq_len = len(prompt) + new_tokens
    model.setup_caches(1, max_seq_len)
    config = GenerationConfig(max_tokens=new_tokens, stop_at_eos=False)
    generate(model, prompt, GenerationConfig(max_tokens=8, stop_at_eos=False), max_seq_len=max_seq_len)  # warm-up
    eager = generate(model, prompt, config, max_seq_len=max_seq_len)  # the reference for tokens and speed-up
    log(f"eager decode: {eager.decode_tok_s:.1f} tok/s")
    used, fn, warm_s = make_decoder(mode, model, device, prompt, max_seq_len)
    log(f"decode step ready ({used}, {warm_s:.1f}s warm-up)")
    runs = [generate(model, prompt, config, decode_fn=fn, max_seq_len=max_seq_len) for _ in range(repeats)]
    best = max(runs, key=lambda r: r.decode_tok_s)
    return {
        "mode": used,
        "warmup_s": round(warm_s, 1),
        "decode_tok_s": best.decode_tok_s,
        "runs_tok_s": [round(r.decode_tok_s, 1) for r in runs],
        "tokens": best.tokens,
        "eager_decode_tok_s": eager.decode_tok_s,
        "tokens_agreeing_with_eager": agreeing_prefix(best.tokens, eager.tokens),
        "kv_cache_bytes": model.cache_nbytes(),
    }


def agreeing_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two greedy runs share (bf16 rounding may part them after a while)."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def bench_ttft(model: Transformer, device: torch.device, length: int, repeats: int) -> dict:
    ids = torch.randint(3, model.args.vocab_size, (1, length), generator=torch.Generator().manual_seed(1))
    ids[0, 0] = 1
    ids = ids.to(device)
    model.setup_caches(1, length + 1)
    chunk = model.window
    times = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            model.reset_caches()
            sync(device)
            start = time.perf_counter()
            logits = prefill(model, ids, 0, chunk)
            token = int(torch.argmax(logits[0]).item())  # the first token, on the host
            times.append(time.perf_counter() - start)
            if i == 0:
                times.clear()  # warm-up: kernel selection, allocator
    assert 0 <= token < model.args.vocab_size
    return {
        "prompt_tokens": length,
        "chunk": chunk,
        "ttft_s": min(times),
        "ttft_median_s": statistics.median(times),
        "prefill_tok_s": length / min(times),
    }


def bench_hf(model: Transformer, device: torch.device, prompt: list[int], new_tokens: int, repeats: int) -> dict:
    from hf_reference import hf_model

    state = {k: v for k, v in model.state_dict().items()}
    hf = hf_model(state, model.args, model.output.weight.dtype, attn_implementation="sdpa")
    ids = torch.tensor([prompt], device=device)
    kwargs = {"do_sample": False, "max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "pad_token_id": 0}
    rates, tokens = [], []
    with torch.inference_mode():
        hf.generate(ids, do_sample=False, max_new_tokens=8, pad_token_id=0)
        for _ in range(repeats):
            clock = FirstTokenClock(device)
            out = hf.generate(ids, streamer=clock, **kwargs)
            sync(device)
            end = time.perf_counter()
            rates.append((out.shape[1] - ids.shape[1] - 1) / (end - clock.first))
            tokens = out[0, ids.shape[1] :].tolist()
    del hf
    return {"decode_tok_s": max(rates), "runs_tok_s": [round(r, 1) for r in rates], "tokens": tokens}


class FirstTokenClock:
    """A transformers streamer noting when the first new token is on the host (the first call is the prompt)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.calls, self.first = device, 0, 0.0

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2:
            sync(self.device)
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--ttft-prompt", type=int, default=4096)
    parser.add_argument("--decode", choices=["compile", "graph", "eager"], default="compile")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--bandwidth-gbs", type=float, help="the card's memory bandwidth, when not in the table")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="CPU, a small model (the 'small' preset): exercises the script, not the GPU",
    )
    opts = parser.parse_args()
    t0 = time.perf_counter()

    if opts.dry_run:
        device, dtype, args = torch.device("cpu"), torch.float32, ModelArgs.from_architecture(PRESETS["small"])
        opts.ttft_prompt = min(opts.ttft_prompt, 2 * args.sliding_window + 5)
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device: run this on a GPU machine (or pass --dry-run to check the script on the CPU)")
        device, dtype = torch.device("cuda"), torch.bfloat16
        args = ModelArgs.from_architecture(PRESETS["mistral-7b"])
    card, bandwidth = card_bandwidth(device, opts.bandwidth_gbs)
    log(f"device {card}, {args.n_layers} layers, dim {args.dim}, window {args.sliding_window}, {dtype}")

    model = random_model(args, device, dtype)
    sync(device)
    weight_bytes = sum(p.nbytes for p in model.parameters())
    embed_bytes = model.tok_embeddings.weight.nbytes
    log(f"random model ready: {weight_bytes / 1e9:.2f} GB of weights ({time.perf_counter() - t0:.1f}s)")
    prompt = [1, *torch.randint(3, args.vocab_size, (15,), generator=torch.Generator().manual_seed(0)).tolist()]
    doc: dict = {
        "device": card,
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "params": sum(p.numel() for p in model.parameters()),
        "weight_bytes": weight_bytes,
    }

    def save() -> None:  # after every phase, so that a later failure keeps what was measured
        if opts.json_out:
            opts.json_out.write_text(json.dumps(doc, indent=1, default=str))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    dec = bench_decode(model, device, prompt, opts.new_tokens, opts.decode, opts.repeats)
    # bytes one decode step reads: every weight but the embedding table (one row of it), and the whole KV cache
    step_bytes = weight_bytes - embed_bytes + args.dim * model.tok_embeddings.weight.itemsize + dec["kv_cache_bytes"]
    doc["decode"] = {k: v for k, v in dec.items() if k != "tokens"}
    doc["decode"]["bytes_per_token"] = step_bytes
    doc["decode"]["peak_gpu_gib"] = peak_gib(device)
    if bandwidth:
        roofline = bandwidth / step_bytes
        doc["roofline_tok_s"] = roofline
        doc["fraction_of_roofline"] = dec["decode_tok_s"] / roofline
    log(f"m7b decode: {dec['decode_tok_s']:.1f} tok/s ({dec['mode']}), runs {dec['runs_tok_s']}")
    save()

    if time.perf_counter() - t0 < BUDGET_S:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        doc["ttft"] = bench_ttft(model, device, opts.ttft_prompt, opts.repeats)
        doc["ttft"]["peak_gpu_gib"] = peak_gib(device)
        log(f"TTFT, {opts.ttft_prompt}-token prompt: {doc['ttft']['ttft_s'] * 1000:.0f} ms")
        save()
    else:
        log("skipping TTFT: time budget spent")
    model.setup_caches(1, 1)  # free the large caches and the compiled graphs' memory before transformers runs
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    hf = None
    if not opts.skip_hf and time.perf_counter() - t0 < BUDGET_S:
        try:
            hf = bench_hf(model, device, prompt, opts.new_tokens, max(1, opts.repeats - 1))
        except Exception as exc:  # noqa: BLE001 — keep m7b's figures when the comparison cannot run
            doc["transformers_error"] = f"{type(exc).__name__}: {exc}"
            log(f"transformers phase failed: {doc['transformers_error'][:300]}")
    if hf is not None:
        doc["transformers_decode_tok_s"] = hf["decode_tok_s"]
        doc["transformers_runs_tok_s"] = hf["runs_tok_s"]
        doc["ratio_vs_transformers"] = dec["decode_tok_s"] / hf["decode_tok_s"]
        doc["greedy_tokens_agreeing_prefix"] = agreeing_prefix(dec["tokens"], hf["tokens"])
        log(f"transformers decode: {hf['decode_tok_s']:.1f} tok/s, runs {hf['runs_tok_s']}")
    doc["wall_s"] = round(time.perf_counter() - t0, 1)

    lines = [
        f"{card}, {doc['dtype']}, Mistral-7B shape{' (dry run: small preset)' if opts.dry_run else ''}",
        f"  m7b decode        {dec['decode_tok_s']:8.1f} tok/s  ({dec['mode']}, best of {opts.repeats}, "
        f"{opts.new_tokens} new tokens)",
        f"  m7b eager decode  {dec['eager_decode_tok_s']:8.1f} tok/s  (same tokens as {dec['mode']} for "
        f"{dec['tokens_agreeing_with_eager']} of {len(dec['tokens'])})",
    ]
    if "roofline_tok_s" in doc:
        lines.append(
            f"  roofline          {doc['roofline_tok_s']:8.1f} tok/s  ({step_bytes / 1e9:.2f} GB/token at "
            f"{bandwidth / 1e12:.2f} TB/s): {100 * doc['fraction_of_roofline']:.0f}% (target >= 80%)"
        )
    if "transformers_decode_tok_s" in doc:
        lines.append(
            f"  transformers      {doc['transformers_decode_tok_s']:8.1f} tok/s  -> m7b is "
            f"{doc['ratio_vs_transformers']:.2f}x (target >= 3x); greedy agree for "
            f"{doc['greedy_tokens_agreeing_prefix']} tokens"
        )
    if "ttft" in doc:
        t = doc["ttft"]
        lines.append(
            f"  TTFT              {t['ttft_s'] * 1000:8.1f} ms     ({t['prompt_tokens']}-token prompt, "
            f"prefill {t['prefill_tok_s']:.0f} tok/s)"
        )
    if device.type == "cuda":
        lines.append(
            f"  peak GPU memory   decode {doc['decode']['peak_gpu_gib']:.2f} GiB, "
            f"4096-token prefill {doc.get('ttft', {}).get('peak_gpu_gib', float('nan')):.2f} GiB"
        )
    lines.append(f"  wall time         {doc['wall_s']} s")
    print("\n".join(lines))
    save()


if __name__ == "__main__":
    main()
