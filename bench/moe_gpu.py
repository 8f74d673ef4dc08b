"""The GPU benchmark's mixture-of-experts section (`python bench/run_gpu.py --moe`, its own device call): the
Mixtral 8x7B shape built in device memory (93.4 GB of random bf16, never on disk: expert weights allocated stacked,
(E, 2H, D) and (E, D, H) per layer, the checkpoint's per-expert weights views of them, as the loader's
`stack_experts` leaves them), then decode with the compiled step (the chosen experts gathered by index), a captured
CUDA graph and eager, against the active-bytes roofline (the measured copy bandwidth over the bytes one token reads:
attention, norms, gates, 2 of 8 experts per layer, the output matrix and the KV cache; 25.8 GB in bf16), target
>= 70%; transformers' MixtralForCausalLM beside it on the same tensors (its stacked experts *are* m7b's stacked
buffers: no second copy), `generate` as is and with its static cache.

`--dry-run` runs every phase on the CPU with the `mixtral-tiny` shape (the graph step a skipped entry): it checks
the script, its figures mean nothing.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from run_gpu import FirstTokenClock, copy_bandwidth, in_process, log, sync, verdict

from m7b.runtime.loader import Runtime
from m7b.runtime.model import Transformer
from m7b.runtime.moe import MoeFeedForward
from m7b.runtime.tokenizer import Tokenizer
from m7b.synth import PRESETS, bundled_tokenizer

TARGET_ROOFLINE = 0.70
PROMPT = "The torrent arrived without a blog post, four files and a magnet link. What the weights say is"


def build_in_device_memory(preset: str, device: torch.device, seed: int = 0) -> Transformer:
    """A model of `preset`'s shape on `device`, random bf16 weights (norms near 1, weights ~ N(0, 1/fan_in), gates
    wider), each expert's weights rows of one stacked tensor per layer, allocated once."""
    args = PRESETS[preset].resolved()
    with torch.device("meta"):
        model = Transformer(args).to(torch.bfloat16)  # nothing allocated yet
    gen = torch.Generator(device=device).manual_seed(seed)
    for layer in model.blocks:
        ffn = layer.feed_forward
        if not isinstance(ffn, MoeFeedForward):
            continue
        h, d = args.hidden_dim, args.dim
        w13 = torch.empty(ffn.num_experts, 2 * h, d, dtype=torch.bfloat16, device=device)
        w2s = torch.empty(ffn.num_experts, d, h, dtype=torch.bfloat16, device=device)
        for e in range(ffn.num_experts):
            ex = ffn.expert(e)
            ex.w1.weight = torch.nn.Parameter(w13[e, :h], requires_grad=False)
            ex.w3.weight = torch.nn.Parameter(w13[e, h:], requires_grad=False)
            ex.w2.weight = torch.nn.Parameter(w2s[e], requires_grad=False)
        ffn.register_buffer("w13", w13, persistent=False)
        ffn.register_buffer("w2s", w2s, persistent=False)
        ffn.stacked = True
    for module in model.modules():  # everything else: allocated once on the device
        for name, p in list(module.named_parameters(recurse=False)):
            if p.is_meta:
                setattr(module, name, torch.nn.Parameter(torch.empty_like(p, device=device), requires_grad=False))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(1.0, 0.1, generator=gen)
            else:
                scale = 4.0 if name.endswith("feed_forward.gate.weight") else 1.0
                p.normal_(0.0, 1.0 if name == "tok_embeddings.weight" else scale / math.sqrt(p.shape[1]), generator=gen)
    model.requires_grad_(False)
    return model.eval()


def hf_mixtral_sharing(model: Transformer) -> Any:
    """transformers' MixtralForCausalLM holding the same tensors: embeddings, norms, v/o, gates and the stacked
    experts shared (transformers 5 stores experts as (E, 2H, D) gate_up and (E, D, H) down: m7b's w13 and w2s);
    only q/k are copied (rows permuted for its rotary layout)."""
    from transformers import MixtralConfig, MixtralForCausalLM

    from m7b.runtime.hf_twin import permute_rows

    a = model.args
    assert a.moe is not None
    config = MixtralConfig(
        vocab_size=a.vocab_size,
        hidden_size=a.dim,
        intermediate_size=a.hidden_dim,
        num_hidden_layers=a.n_layers,
        num_attention_heads=a.n_heads,
        num_key_value_heads=a.n_kv_heads,
        head_dim=a.head_dim,
        rms_norm_eps=a.norm_eps,
        sliding_window=a.sliding_window,
        rope_theta=a.effective_rope_theta,
        max_position_embeddings=a.max_positions,
        num_local_experts=a.moe.num_experts,
        num_experts_per_tok=a.moe.num_experts_per_tok,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        attn_implementation="sdpa",
    )
    with torch.device("meta"):
        hf = MixtralForCausalLM(config)
    sd = {
        "model.embed_tokens.weight": model.tok_embeddings.weight,
        "model.norm.weight": model.norm.weight,
        "lm_head.weight": model.output.weight,
    }
    for i, layer in enumerate(model.blocks):
        p, at, ffn = f"model.layers.{i}.", layer.attention, layer.feed_forward
        assert isinstance(ffn, MoeFeedForward) and ffn.stacked
        sd[p + "self_attn.q_proj.weight"] = permute_rows(at.wq.weight, a.n_heads)
        sd[p + "self_attn.k_proj.weight"] = permute_rows(at.wk.weight, a.n_kv_heads)
        sd[p + "self_attn.v_proj.weight"] = at.wv.weight
        sd[p + "self_attn.o_proj.weight"] = at.wo.weight
        sd[p + "mlp.gate.weight"] = ffn.gate.weight
        sd[p + "mlp.experts.gate_up_proj"] = ffn.w13
        sd[p + "mlp.experts.down_proj"] = ffn.w2s
        sd[p + "input_layernorm.weight"] = layer.attention_norm.weight
        sd[p + "post_attention_layernorm.weight"] = layer.ffn_norm.weight
    hf.load_state_dict(sd, strict=True, assign=True)
    device = model.output.weight.device
    hf.model.rotary_emb = type(hf.model.rotary_emb)(config).to(device)
    return hf.eval()


def transformers_mixtral(rt: Runtime, new_tokens: int, repeats: int) -> dict:
    model, device = rt.model, rt.device
    model.setup_caches(1, 1)  # free the large caches before transformers allocates its own
    hf = hf_mixtral_sharing(model)
    ids = torch.tensor([rt.tokenizer.encode(PROMPT)], device=device)
    out: dict = {}
    for name, extra in (("default", {}), ("static", {"cache_implementation": "static"})):
        kwargs = {"do_sample": False, "max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "pad_token_id": 0}
        try:
            rates = []
            with torch.inference_mode():
                warm = time.perf_counter()
                for _ in range(2 if extra else 1):
                    hf.generate(ids, **{**kwargs, "max_new_tokens": 16, "min_new_tokens": 16}, **extra)
                warm_s = time.perf_counter() - warm
                for _ in range(repeats):
                    clock = FirstTokenClock(device)
                    result = hf.generate(ids, streamer=clock, **kwargs, **extra)
                    sync(device)
                    rates.append((result.shape[1] - ids.shape[1] - 1) / (time.perf_counter() - clock.first))
            out[name] = {"decode_tok_s": max(rates), "runs_tok_s": [round(r, 1) for r in rates], "warmup_s": warm_s}
            log(f"transformers Mixtral {name}: {max(rates):.1f} tok/s (warm-up {warm_s:.1f}s)")
        except Exception as exc:  # noqa: BLE001 — keep the other figures
            out[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            log(f"transformers Mixtral {name}: failed ({out[name]['error']})")
    del hf
    return out


def run_moe_gpu(dry_run: bool, new_tokens: int, repeats: int, home: Any, skip_hf: bool) -> dict:
    if dry_run:
        device, preset, bw_bytes = torch.device("cpu"), "mixtral-tiny", 1 << 26
        new_tokens, repeats = min(new_tokens, 32), 2
    else:
        device, preset, bw_bytes = torch.device("cuda"), "mixtral-8x7b", 1 << 31
    doc: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)",
        "shape": preset,
        "dtype": "bfloat16",
        "new_tokens": new_tokens,
        "torch": torch.__version__,
    }
    doc["copy_bandwidth_bytes_s"] = copy_bandwidth(device, bw_bytes)
    start = time.perf_counter()
    model = build_in_device_memory(preset, device)
    sync(device)
    doc["build_s"] = round(time.perf_counter() - start, 1)
    args = model.args
    doc["weights_bytes"] = args.parameter_count() * 2
    log(f"{preset} built in device memory in {doc['build_s']}s ({doc['weights_bytes'] / 1e9:.1f} GB)")
    rt = Runtime(model, Tokenizer(bundled_tokenizer()), args, device, torch.bfloat16, home / "none")
    doc["in_process"] = in_process(rt, new_tokens, ["compile", "graph", "eager"], home, repeats)
    kv = next((v["kv_cache_bytes"] for v in doc["in_process"].values() if "kv_cache_bytes" in v), 0)
    doc["active_bytes_per_token"] = (args.active_parameter_count() - args.vocab_size * args.dim) * 2 + kv
    doc["roofline_tok_s"] = doc["copy_bandwidth_bytes_s"] / doc["active_bytes_per_token"]
    doc["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    if not skip_hf:
        doc["transformers"] = transformers_mixtral(rt, new_tokens, max(1, repeats - 1))
    return doc


def report_moe(doc: dict) -> list[str]:
    lines = [
        f"mixture of experts: {doc['shape']} built in device memory ({doc['weights_bytes'] / 1e9:.1f} GB, "
        f"{doc['build_s']}s), {doc['device']}, {doc['new_tokens']} new tokens",
        f"  copy bandwidth {doc['copy_bandwidth_bytes_s'] / 1e9:.1f} GB/s; active bytes a token "
        f"{doc['active_bytes_per_token'] / 1e9:.2f} GB -> roofline {doc['roofline_tok_s']:.1f} tok/s",
    ]
    best = 0.0
    for mode, fig in doc["in_process"].items():
        if "decode_tok_s" in fig:
            share = fig["decode_tok_s"] / doc["roofline_tok_s"]
            best = max(best, share)
            lines.append(
                f"  m7b {mode:8s} {fig['decode_tok_s']:8.1f} tok/s  {100 * share:.0f}% of the roofline  "
                f"(prepared in {fig['prepare_s']:.1f}s)"
            )
        else:
            lines.append(f"  m7b {mode:8s} {fig.get('skipped') or fig.get('error')}")
    compiled = doc["in_process"].get("compile", {}).get("decode_tok_s")
    share = compiled / doc["roofline_tok_s"] if compiled else None
    lines.append(
        f"  compiled step vs roofline: target >= {100 * TARGET_ROOFLINE:.0f}%: {verdict(share, TARGET_ROOFLINE)}"
    )
    for name, fig in doc.get("transformers", {}).items():
        lines.append(
            f"  transformers Mixtral {name:8s} "
            + (f"{fig['decode_tok_s']:8.1f} tok/s" if "decode_tok_s" in fig else str(fig.get("error")))
        )
    if doc["device"].startswith("cpu"):
        lines.append(
            "  dry run on the CPU: still to measure on a GPU — the 8x7B compiled, graph and eager decode tok/s, "
            "their share of the active-bytes roofline (target >= 70%), transformers' default and static paths, "
            "peak GPU memory, build time"
        )
    return lines
