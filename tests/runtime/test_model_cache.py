"""The model's pieces and the rolling-buffer cache: chunking, wrapping, memory, masks, GQA, RoPE."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from m7b.runtime.args import ModelArgs
from m7b.runtime.fused import fuse_projections
from m7b.runtime.model import apply_rotary_emb, band_mask, grouped_attention, grouped_mask

TOL = 1e-5


def _logits(model, ids: torch.Tensor, chunk: int, capacity: int | None = None) -> torch.Tensor:
    n = ids.shape[1]
    model.setup_caches(1, n, capacity=capacity)
    with torch.inference_mode():
        return torch.cat(
            [model(ids[:, b : b + chunk], torch.arange(b, min(b + chunk, n)))[0] for b in range(0, n, chunk)]
        )


@pytest.mark.parametrize("chunk", [1, 5, 16])
def test_chunked_prefill_equals_single_pass(tiny_runtime, random_ids, chunk) -> None:
    ids = random_ids(70, seed=1)
    single = _logits(tiny_runtime.model, ids, 70)
    chunked = _logits(tiny_runtime.model, ids, chunk)
    assert (chunked - single).abs().max().item() <= TOL


def test_rolling_cache_equals_full_recompute(tiny_runtime, random_ids) -> None:
    """Decode 4·W steps through a W-slot cache; compare with one band-masked pass that keeps every position."""
    model = tiny_runtime.model
    ids = random_ids(72, seed=2)
    full = _logits(model, ids, 72, capacity=72)
    model.setup_caches(1, 72)
    assert model.capacity == 16
    with torch.inference_mode():
        rolled = [model(ids[:, :8], torch.arange(8))[0]]
        for p in range(8, 72):
            rolled.append(model(ids[:, p : p + 1], torch.tensor([p]))[0])
    assert (torch.cat(rolled) - full).abs().max().item() <= TOL


def test_cache_bytes_stop_growing_at_the_window(tiny_runtime, random_ids) -> None:
    model, w = tiny_runtime.model, 16
    ids = random_ids(4 * w, seed=3)
    model.setup_caches(1, 4 * w)
    with torch.inference_mode():
        model(ids[:, :w], torch.arange(w))
        after_w = model.cache_nbytes()
        for p in range(w, 4 * w):
            model(ids[:, p : p + 1], torch.tensor([p]))
        after_4w = model.cache_nbytes()
    a = tiny_runtime.args
    assert after_w == after_4w == a.n_layers * 2 * a.n_kv_heads * w * a.head_dim * 4


def test_cache_holds_min_of_window_and_context(tiny_runtime) -> None:
    model = tiny_runtime.model
    model.setup_caches(1, 10)
    assert model.capacity == 10
    model.setup_caches(1, 1000)
    assert model.capacity == 16


def test_band_mask_sees_the_last_w_keys_including_itself() -> None:
    mask = band_mask(torch.arange(10), torch.arange(10), 3)
    for i in range(10):
        assert [k for k in range(10) if mask[i, k]] == list(range(max(0, i - 2), i + 1))
    # empty slots (position -1) are never seen
    assert not band_mask(torch.tensor([0]), torch.tensor([-1, 0]), 3)[0, 0]


def test_grouped_attention_equals_repeated_kv_heads() -> None:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 8, 5, 16, generator=gen)
    k = torch.randn(1, 2, 12, 16, generator=gen)
    v = torch.randn(1, 2, 12, 16, generator=gen)
    mask = band_mask(torch.arange(7, 12), torch.arange(12), 4)
    ref = F.scaled_dot_product_attention(
        q, k.repeat_interleave(4, dim=1), v.repeat_interleave(4, dim=1), attn_mask=mask
    )
    ours = grouped_attention(q, k, v, grouped_mask(mask, 4))
    assert (ours - ref).abs().max().item() <= 1e-6


def test_rope_rotates_interleaved_pairs_like_the_complex_reference() -> None:
    from m7b.runtime.model import precompute_freqs

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 6, 3, 16, generator=gen)
    freqs = precompute_freqs(6, 16, 10000.0)
    inv = 1.0 / (10000.0 ** (torch.arange(0, 16, 2).float() / 16))
    cis = torch.polar(torch.ones(6, 8), torch.outer(torch.arange(6).float(), inv))
    ref = torch.view_as_real(torch.view_as_complex(x.reshape(1, 6, 3, 8, 2)) * cis[None, :, None, :]).flatten(3)
    assert (apply_rotary_emb(x, torch.view_as_complex(freqs)) - ref).abs().max().item() <= 1e-5  # eager CPU
    assert (apply_rotary_emb(x, freqs) - ref).abs().max().item() <= 1e-5  # CUDA and compiled code


def test_model_args_rope_theta_defaults_to_10000(tmp_path) -> None:
    params = {
        "dim": 64,
        "n_layers": 2,
        "head_dim": 16,
        "hidden_dim": 128,
        "n_heads": 4,
        "n_kv_heads": 2,
        "norm_eps": 1e-5,
        "sliding_window": "16",
        "vocab_size": 32000,
    }
    path = tmp_path / "params.json"
    path.write_text(json.dumps(params))
    args = ModelArgs.from_params_file(path)
    assert args.rope_theta == 10000.0 and args.sliding_window == 16 and args.n_rep == 2
    path.write_text(json.dumps({**params, "rope_theta": 1e6}))
    assert ModelArgs.from_params_file(path).rope_theta == 1e6


def test_module_names_are_the_checkpoint_keys(tiny_runtime, tiny_state) -> None:
    assert set(tiny_runtime.model.state_dict()) == set(tiny_state)


@pytest.mark.slow  # a CPU compile: 10 s or more
def test_decode_step_compiles_as_one_graph_and_agrees_with_eager(tiny_runtime) -> None:
    """The CUDA path compiles `decode_one_token` with fullgraph=True; check here (CPU) that it has no graph break
    and takes the real-arithmetic rotary path to the same tokens."""
    import torch._dynamo

    from m7b.runtime.generate import GenerationConfig, decode_one_token, generate

    prompt = list(range(1, 30))  # longer than W=16, and decoding wraps the cache
    config = GenerationConfig(max_tokens=24, stop_at_eos=False)
    eager = generate(tiny_runtime.model, prompt, config)
    torch._dynamo.reset()
    compiled = torch.compile(decode_one_token, fullgraph=True)
    try:
        result = generate(tiny_runtime.model, prompt, config, decode_fn=compiled, max_seq_len=64)
    finally:
        torch._dynamo.reset()
    assert result.tokens == eager.tokens


def test_fused_projections_give_the_same_logits_without_new_memory(tiny_state, tiny_runtime, random_ids) -> None:
    """The GPU loader stacks wq/wk/wv and w1/w3 (gpt-fast); the logits must not change, and neither the state
    dict's keys nor the memory held (the old weights become views of the stacked ones)."""
    from m7b.runtime.loader import build_model

    model = build_model(
        tiny_runtime.args, {k: v.clone() for k, v in tiny_state.items()}, torch.device("cpu"), torch.float32
    )
    ids = random_ids(40, seed=5)
    model.setup_caches(1, 40)
    with torch.inference_mode():
        before = model(ids, torch.arange(40))
    keys = set(model.state_dict())
    fuse_projections(model)
    attn, ffn = model.layers[0].attention, model.layers[0].feed_forward
    assert attn.wqkv is not None and ffn.w13 is not None
    assert attn.wk.weight.untyped_storage().data_ptr() == attn.wqkv.untyped_storage().data_ptr()
    assert ffn.w3.weight.untyped_storage().data_ptr() == ffn.w13.untyped_storage().data_ptr()
    assert set(model.state_dict()) == keys
    model.setup_caches(1, 40)
    with torch.inference_mode():
        after = model(ids, torch.arange(40))
        model.setup_caches(1, 40)  # and a decode step (one position) through the fused weights
        model(ids[:, :39], torch.arange(39))
        step = model(ids[:, 39:], torch.tensor([39]))
    assert (after - before).abs().max().item() <= 1e-4
    assert (step[0, -1] - before[0, -1]).abs().max().item() <= 1e-4


@pytest.mark.slow  # a CPU compile: 10 s or more
def test_fused_projections_compile_as_one_graph(tiny_state, tiny_runtime) -> None:
    """The GPU loader fuses, then compiles the decode step with fullgraph=True: the stacked projections
    (`fused.py`) must trace without a graph break and give the unfused model's tokens."""
    import torch._dynamo

    from m7b.runtime.fused import FusedAttention, FusedFeedForward
    from m7b.runtime.generate import GenerationConfig, decode_one_token, generate
    from m7b.runtime.loader import build_model

    model = build_model(
        tiny_runtime.args, {k: v.clone() for k, v in tiny_state.items()}, torch.device("cpu"), torch.float32
    )
    fuse_projections(model)
    assert isinstance(model.layers[0].attention, FusedAttention)
    assert isinstance(model.layers[0].feed_forward, FusedFeedForward)
    prompt = list(range(1, 30))
    config = GenerationConfig(max_tokens=24, stop_at_eos=False)
    torch._dynamo.reset()
    compiled = torch.compile(decode_one_token, fullgraph=True)
    try:
        result = generate(model, prompt, config, decode_fn=compiled, max_seq_len=64)
    finally:
        torch._dynamo.reset()
    assert result.tokens == generate(tiny_runtime.model, prompt, config).tokens
