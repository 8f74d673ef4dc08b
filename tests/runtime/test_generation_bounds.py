"""Issue 17: generation options that ended in an internal error (exit 1) or NaN are refused or sampled soundly."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from m7b.errors import InvalidInputError
from m7b.manifests.architecture import MAX_SEQ_LEN
from m7b.runtime.generate import MAX_POSITIONS, GenerationConfig, generate
from m7b.runtime.sampling import SamplingConfig, sample


@pytest.mark.parametrize("max_tokens", [MAX_POSITIONS + 1, 10**6, 10**7, 10**8, 10**12])
def test_max_tokens_beyond_what_the_model_addresses_is_refused_before_any_cache(
    cli_inproc, tiny_release_src, max_tokens
):
    """Beyond any model's bound (MAX_SEQ_LEN) before loading; beyond this model's (params.json's max_seq_len, else
    32,768) once its params are read, before a cache or step is made."""
    result = cli_inproc("run", str(tiny_release_src), "--prompt", "Hello", "--max-tokens", str(max_tokens))
    assert result.code == 4, result.stderr
    bound = MAX_POSITIONS if max_tokens <= MAX_SEQ_LEN else MAX_SEQ_LEN
    assert f"--max-tokens must be at most {bound:,}" in result.stderr
    assert f"found {max_tokens:,}" in result.stderr and "internal error" not in result.stderr


def test_prompt_plus_max_tokens_beyond_the_positions_is_refused_before_any_cache(tiny_runtime) -> None:
    model = tiny_runtime.model
    before = model.max_seq_len
    prompt = [1] * 100
    with pytest.raises(InvalidInputError, match=f"ask for at most {MAX_POSITIONS - 100:,} tokens"):
        generate(model, prompt, GenerationConfig(max_tokens=MAX_POSITIONS))
    assert model.max_seq_len == before  # nothing was allocated for it


@pytest.mark.parametrize("temperature, top_p", [(1e-40, 1.0), (1.0, 5e-324), (1e-40, 5e-324), (5e-324, 0.5)])
def test_a_temperature_or_top_p_below_float32_is_greedy_not_nan(temperature, top_p) -> None:
    logits = torch.tensor([0.5, 3.0, -1.0, 2.9, float("-inf")])
    config = SamplingConfig(temperature=temperature, top_p=top_p)
    config.validate()
    gen = config.generator(torch.device("cpu"))
    assert {sample(logits, config, gen).item() for _ in range(20)} == {1}


def test_tiny_temperature_and_top_p_run_from_the_cli(cli_inproc, tiny_release_src) -> None:
    args = ("--prompt", "Hello", "--max-tokens", "4", "--json", "--device", "cpu")
    for extra in (("--temperature", "1e-40"), ("--temperature", "1", "--top-p", "5e-324")):
        result = cli_inproc("run", str(tiny_release_src), *args, *extra)
        assert result.code == 0, result.stderr
        greedy = cli_inproc("run", str(tiny_release_src), *args)
        assert (
            '"token_ids"' in result.stdout
            and result.stdout.split('"token_ids"')[1][:40] == greedy.stdout.split('"token_ids"')[1][:40]
        )


@pytest.mark.parametrize("temperature", ["inf", "nan", "-1"])
def test_a_temperature_that_is_not_a_finite_positive_number_is_refused(cli_inproc, tiny_release_src, temperature):
    result = cli_inproc("run", str(tiny_release_src), "--prompt", "Hello", "--temperature", temperature)
    assert result.code == 4
    assert "--temperature must be 0 (greedy) or a positive finite number" in result.stderr


@given(
    logits=st.lists(st.floats(-1e30, 1e30).map(lambda x: float(torch.tensor(x))), min_size=1, max_size=8),
    temperature=st.floats(min_value=0, max_value=1e300, allow_subnormal=True),
    top_p=st.floats(min_value=5e-324, max_value=1.0),
)
def test_any_valid_sampling_config_gives_a_token_in_the_vocabulary(logits, temperature, top_p) -> None:
    config = SamplingConfig(temperature=temperature, top_p=top_p)
    config.validate()
    token = sample(torch.tensor(logits), config, config.generator(torch.device("cpu"))).item()
    assert 0 <= token < len(logits) and math.isfinite(logits[token])
