"""Property-based fuzzing of the GGUF writer's inputs and of the GGUF reader verify uses: any finite weights encode
as gguf-py's reference quantizers do (q8_0, q4_0, bf16) or within q6_K's bound; any tokenizer pieces give the
vocabulary sentencepiece reads, or an InvalidInputError naming the file; any bytes where a .gguf should be give a
finding, never a crash. Budget: the `ci` profile (tests/conftest.py)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from m7b.errors import InvalidInputError
from m7b.synth import bundled_tokenizer
from m7b.verify import gguf_quant
from m7b.verify.gguf_out import check_gguf_folder
from m7b.verify.gguf_tokenizer import gguf_vocab

sys.path.insert(0, str(Path(__file__).parents[1] / "verify"))
from odd_tokenizers import edited  # noqa: E402

# bf16 bit patterns of zero and of normal values from 2^-117 to 2^17: a block's scale stays a normal fp16-range float
# (below, ggml's own reference divides by a subnormal scale: undefined behaviour in C, garbage in every reference)
finite_bf16 = st.one_of(
    st.just(0x0000),  # not -0.0: for a block of zeros signed so, gguf-py's q4_0 scale is +0 where ggml's is -0
    # (tests/verify/test_gguf_llamacpp.py checks that case against llama-quantize itself)
    st.builds(lambda sign, exp, mant: sign << 15 | exp << 7 | mant, st.integers(0, 1), st.integers(10, 0x90),
              st.integers(0, 0x7F)),
)  # fmt: skip


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.uint16, st.tuples(st.integers(1, 2), st.just(256)), elements=finite_bf16))
def test_block_quantizers_equal_gguf_pys_on_any_finite_weights(bits: np.ndarray) -> None:
    values = gguf_quant.bf16_to_f32(bits)
    for kind, ref in (
        (gguf_quant.Q8_0, gguf.GGMLQuantizationType.Q8_0),
        (gguf_quant.Q4_0, gguf.GGMLQuantizationType.Q4_0),
    ):
        assert np.array_equal(gguf_quant.encode(bits, kind), gguf.quants.quantize(values, ref).reshape(-1))
    assert np.array_equal(gguf_quant.encode(bits, gguf_quant.BF16).view(np.uint16), bits.reshape(-1))


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(hnp.arrays(np.uint16, st.just((1, 256)), elements=finite_bf16))
def test_q6_k_stays_within_one_step_of_any_finite_weights(bits: np.ndarray) -> None:
    values = gguf_quant.bf16_to_f32(bits)
    q6 = gguf_quant.encode(bits, gguf_quant.Q6_K)
    back = gguf.quants.dequantize(q6.reshape(1, -1), gguf.GGMLQuantizationType.Q6_K)
    # each value within a step of its sub-block's grid (amax/32, twice for the rounded scales), plus what the int8
    # sub-block scale loses against the super-block's largest (a 128th of it), plus fp16's subnormal step in the
    # super-block scale (2^-24, times at most 127 * 32 levels): a block of tiny weights may dequantize to zero
    blocks = values.reshape(-1, 16)
    bound = np.abs(blocks).max(axis=1, keepdims=True) / 16 + np.abs(values).max() / 128 + 127 * 32 * 2.0**-24
    assert np.all(np.abs(back.reshape(-1, 16) - blocks) <= bound)


@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 3), st.just(64)), elements=st.floats(width=32)))
def test_bf16_rounding_equals_gguf_pys(x: np.ndarray) -> None:
    ref = gguf.quants.quantize(x, gguf.GGMLQuantizationType.BF16).view(np.uint16)
    assert np.array_equal(gguf_quant.f32_to_bf16(x), ref)


pieces = st.text(st.characters(exclude_categories=("Cs",)), min_size=0, max_size=60)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=40, deadline=None)
@given(st.dictionaries(st.integers(300, 31999), pieces, max_size=6), st.lists(pieces, max_size=2))
def test_any_tokenizer_pieces_give_sentencepieces_vocabulary_or_invalid_input(
    tmp_path_factory: pytest.TempPathFactory, replaced: dict[int, str], added: list[str]
) -> None:
    import sentencepiece

    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    shutil.copyfile(bundled_tokenizer(), path)
    edited(path, pieces=replaced, add=added)
    try:
        vocab = gguf_vocab(path, 32000)
    except InvalidInputError as exc:
        assert str(path) in str(exc)
        return
    sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
    assert len(vocab.tokens) == 32000 and sp.get_piece_size() <= 32000
    for i in list(replaced) + [0, 1, 2, 31999]:
        assert vocab.tokens[i] == sp.id_to_piece(i).encode("utf-8")
        assert np.float32(vocab.scores[i]) == np.float32(sp.get_score(i))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60, deadline=None)
@given(st.binary(max_size=4096), st.integers(0, 8), st.binary(max_size=64))
def test_any_bytes_where_a_gguf_should_be_give_a_finding(
    tmp_path_factory: pytest.TempPathFactory, tail: bytes, cut: int, middle: bytes
) -> None:
    folder = tmp_path_factory.mktemp("g")
    head = b"GGUF" + (3).to_bytes(4, "little")
    (folder / "x-Q8_0.gguf").write_bytes((head + middle)[: 8 + cut * 4] + tail)
    findings = check_gguf_folder(folder, "gguf-q8_0")
    assert len(findings) == 1 and findings[0].status.value in ("invalid", "mismatch")
