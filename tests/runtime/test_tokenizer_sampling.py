"""Tokenizer (BOS, streaming detokenisation over byte-fallback pieces) and sampling."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from m7b.errors import InvalidInputError
from m7b.runtime.generate import GenerationConfig, generate
from m7b.runtime.sampling import SamplingConfig, sample


def test_encode_puts_bos_first(tiny_runtime) -> None:
    tok = tiny_runtime.tokenizer
    ids = tok.encode("Hello world")
    assert ids[0] == tok.bos_id == 1
    assert ids[1:] == tok.sp.encode("Hello world")


def test_a_prompt_that_tokenises_to_nothing_is_an_error(tiny_runtime) -> None:
    with pytest.raises(InvalidInputError, match="tokenises to nothing"):
        tiny_runtime.tokenizer.encode("")


@pytest.mark.parametrize("text", ["𝔘𝔫𝔦 and ꙮ, 🦜🫠 melt", "plain ascii words", "Ünïcödé ☃ 𓂀 퉷"])
def test_streaming_never_emits_broken_utf8(tiny_runtime, text) -> None:
    tok = tiny_runtime.tokenizer
    prompt = tok.encode("Say:")
    ids = tok.sp.encode(text)  # the completion: its first piece carries the space that separates it
    stream = tok.stream()
    chunks = [stream.push(i) for i in ids]
    chunks.append(stream.flush())
    assert all("\ufffd" not in c for c in chunks)
    expected = tok.decode(prompt[1:] + ids)[len(tok.decode(prompt[1:])) :]
    assert "".join(chunks) == expected
    if any(tok.sp.is_byte(i) for i in ids):
        assert "" in chunks[:-1]  # a partial character was held back, not printed broken


def test_stream_flushes_an_unfinished_character_as_replacement(tiny_runtime) -> None:
    tok = tiny_runtime.tokenizer
    stream = tok.stream()
    assert stream.push(tok.sp.piece_to_id("<0xF0>")) == ""
    assert stream.flush() == "\ufffd"


def test_greedy_is_argmax() -> None:
    logits = torch.tensor([0.1, 3.0, -1.0, 2.9])
    assert sample(logits, SamplingConfig(), None).item() == 1


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(
        st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from([0.0, -0.0, 1.0])),
        min_size=1,
        max_size=64,
    ),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
)
def test_greedy_picks_what_torch_argmax_picks(values: list[float], dtype: torch.dtype) -> None:
    """The first largest logit, ties and NaN (counted as the largest) included, in every logits dtype."""
    logits = torch.tensor(values).to(dtype)
    got = sample(logits, SamplingConfig(), None)
    want = torch.argmax(logits.float(), dim=-1, keepdim=True)
    assert got.dtype == torch.long and got.shape == (1,) and got.item() == want.item()


def test_top_p_keeps_the_nucleus() -> None:
    logits = torch.tensor([5.0, 0.0, 0.0, 0.0])  # the first token holds ~95% of the mass
    config = SamplingConfig(temperature=1.0, top_p=0.5, seed=0)
    gen = config.generator(torch.device("cpu"))
    assert {sample(logits, config, gen).item() for _ in range(50)} == {0}


def test_same_seed_same_tokens_other_seed_other_tokens(tiny_runtime) -> None:
    prompt = tiny_runtime.tokenizer.encode("Once upon a time")

    def run(seed: int) -> list[int]:
        config = GenerationConfig(
            max_tokens=24, stop_at_eos=False, sampling=SamplingConfig(temperature=1.0, top_p=0.9, seed=seed)
        )
        return generate(tiny_runtime.model, prompt, config).tokens

    assert run(7) == run(7)
    assert run(7) != run(8)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (GenerationConfig(max_tokens=0), "max_tokens"),
        (GenerationConfig(sampling=SamplingConfig(temperature=-1)), "temperature"),
        (GenerationConfig(sampling=SamplingConfig(top_p=0)), "top_p"),
    ],
)
def test_bad_generation_options(config, match) -> None:
    """The library names the field (the CLI words it as its flag); it never speaks in flags itself."""
    with pytest.raises(InvalidInputError, match=match) as caught:
        config.validate()
    assert caught.value.data["field"] == match and "--" not in str(caught.value)


def test_generation_stops_at_eos(tiny_runtime, monkeypatch) -> None:
    import m7b.runtime.generate as gen

    real = gen.sample
    calls = iter(range(100))
    monkeypatch.setattr(
        gen,
        "sample",
        lambda logits, c, g: real(logits, c, g) if next(calls) < 3 else torch.tensor([tiny_runtime.tokenizer.eos_id]),
    )
    result = generate(
        tiny_runtime.model, [1, 22557], GenerationConfig(max_tokens=20), eos_id=tiny_runtime.tokenizer.eos_id
    )
    assert result.stop_reason == "eos" and len(result.tokens) == 4


def test_device_auto_picks_cuda_when_present(monkeypatch) -> None:
    from m7b.runtime.device import default_dtype, resolve_device, resolve_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_dtype(None, torch.device("cpu")) is None  # the loader decides, seeing the checkpoint
    # The CPU default never widens the checkpoint (a float32 copy of the 7B is 29 GB); CUDA computes in bfloat16.
    assert default_dtype(torch.device("cpu"), torch.bfloat16) == torch.bfloat16
    assert default_dtype(torch.device("cpu"), torch.float32) == torch.float32
    assert default_dtype(torch.device("cuda"), torch.float32) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_dtype("float32", torch.device("cuda")) == torch.float32
