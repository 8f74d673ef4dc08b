"""m7b's runtime against transformers' MistralForCausalLM on the same weights (fp32, tiny release, W=16)."""

from __future__ import annotations

import pytest
import torch

from m7b.runtime.generate import GenerationConfig, generate
from m7b.runtime.hf_twin import hf_model

TOL = 1e-4


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def hf_tiny(request, tiny_runtime, tiny_state):
    return hf_model(tiny_state, tiny_runtime.args, torch.float32, attn_implementation=request.param)


def _m7b_logits(model, ids: torch.Tensor, chunk: int) -> torch.Tensor:
    n = ids.shape[1]
    model.setup_caches(1, n)
    with torch.inference_mode():
        return torch.cat(
            [model(ids[:, b : b + chunk], torch.arange(b, min(b + chunk, n)))[0] for b in range(0, n, chunk)]
        )


def test_window_is_small_and_sequence_crosses_it(tiny_runtime) -> None:
    assert tiny_runtime.args.sliding_window == 16
    assert tiny_runtime.args.n_kv_heads < tiny_runtime.args.n_heads
    assert tiny_runtime.args.rope_theta == 10000.0


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [80, 16, 7])
def test_logits_match_transformers(tiny_runtime, hf_tiny, random_ids, chunk) -> None:
    ids = random_ids(80)
    with torch.inference_mode():
        ref = hf_tiny(ids).logits[0]
    ours = _m7b_logits(tiny_runtime.model, ids, chunk)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() <= TOL


def test_the_window_matters(tiny_runtime, tiny_state, random_ids) -> None:
    """Past position W the logits depend on the window: a model that ignores it differs, so parity means something."""
    from dataclasses import replace

    full = hf_model(tiny_state, replace(tiny_runtime.args, sliding_window=4096))
    ids = random_ids(80)
    with torch.inference_mode():
        no_window = full(ids).logits[0]
    ours = _m7b_logits(tiny_runtime.model, ids, 80)
    assert (ours[:16] - no_window[:16]).abs().max().item() <= TOL  # within the window: the same
    assert (ours[16:] - no_window[16:]).abs().max().item() > 1e-2


def test_32_greedy_tokens_past_the_window_match(tiny_runtime, hf_tiny, random_ids) -> None:
    prompt = random_ids(40)
    result = generate(tiny_runtime.model, prompt[0].tolist(), GenerationConfig(max_tokens=32, stop_at_eos=False))
    with torch.inference_mode():
        theirs = hf_tiny.generate(prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=0)
    assert len(result.tokens) == 32
    assert result.tokens == theirs[0, 40:].tolist()
    # every decode step's logits, too: the whole sequence in one transformers pass vs m7b's rolling cache
    seq = torch.cat([prompt, torch.tensor([result.tokens[:-1]])], dim=1)
    with torch.inference_mode():
        ref = hf_tiny(seq).logits[0, 39:]
    model = tiny_runtime.model
    model.setup_caches(1, seq.shape[1])
    steps = []
    with torch.inference_mode():
        steps.append(model(prompt, torch.arange(40), last_only=True)[0, -1])
        for i, tok in enumerate(result.tokens[:-1]):
            steps.append(model(torch.tensor([[tok]]), torch.tensor([40 + i]))[0, -1])
    assert model.capacity == 16
    assert (torch.stack(steps) - ref).abs().max().item() <= TOL


def test_the_converters_hf_folder_loads_into_transformers_with_the_same_logits(
    tiny_runtime, tiny_release_src, tmp_path, random_ids
) -> None:
    """The `m7b convert --to hf` output, opened by transformers' own from_pretrained, agrees with the runtime."""
    from transformers import MistralForCausalLM

    from m7b.verify.convert import convert_release

    out = convert_release(tiny_release_src, tmp_path / "hf", "hf").out
    hf = MistralForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert hf.config.sliding_window == 16
    ids = random_ids(64, seed=5)
    with torch.inference_mode():
        ref = hf(ids).logits[0]
    assert (_m7b_logits(tiny_runtime.model, ids, 16) - ref).abs().max().item() <= TOL
