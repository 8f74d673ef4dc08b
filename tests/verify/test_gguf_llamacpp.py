"""m7b's GGUF against llama.cpp itself (scripts/build-llamacpp): every tensor equal to what its converter writes
from m7b's hf layout (bf16, f16) and to what llama-quantize writes from m7b's bf16 file (q8_0, q4_0: block for
block), on the synthetic release and on values chosen to hit every rounding edge; and llama.cpp runs the file with
the logits m7b computes."""

from __future__ import annotations

import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from llamacpp import (
    assert_converters_file,
    assert_llama_cpp_logits,
    assert_quantizers_file,
    bindings,
    convert_hf,
    kv,
    llama,
    m7b_outputs,
    quantize,
    require_tools,
    tensors,
)
from odd_tokenizers import ODD_PIECES, edited

from m7b.verify import gguf_quant
from m7b.verify.convert import convert_release
from m7b.verify.gguf_quant import choose_type

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tools() -> Path:
    return require_tools()


@pytest.fixture(scope="module")
def outputs(small_release_src: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The small release (dim 256: its output layer takes q6_K in a q4_0 file) in m7b's hf and four GGUF layouts."""
    return m7b_outputs(small_release_src, tmp_path_factory.mktemp("gguf-ref"), "small", "ab" * 20)


@pytest.mark.parametrize("outtype", ["bf16", "f16"])
def test_each_tensor_equals_llama_cpps_converter_from_m7bs_hf_layout(tools, outputs, tmp_path, outtype) -> None:
    assert_converters_file(outputs[outtype], convert_hf(tools, outputs["hf"], tmp_path / "ref.gguf", outtype))
    extra = {k for k in kv(outputs[outtype]) if k.startswith("m7b.")}
    assert extra >= {"m7b.checkpoint.sha256", "m7b.torrent.info_hash", "m7b.version", "m7b.release"}


@pytest.mark.parametrize("file_type", ["q8_0", "q4_0"])
def test_each_block_equals_llama_quantizes_from_m7bs_bf16(tools, outputs, tmp_path, file_type) -> None:
    ref = quantize(tools, outputs["bf16"], tmp_path / "ref.gguf", file_type)
    theirs = assert_quantizers_file(outputs[file_type], ref)
    if file_type == "q4_0":
        assert theirs["output.weight"][0] == "Q6_K"


def _edge_values(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """bf16 values that hit each quantizer's edges: exact rounding ties, all-zero blocks and sub-blocks, a single
    non-zero, equal magnitudes of both signs, tiny (subnormal) and large magnitudes, scales spread over 1e-6..1e2."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32) * rng.choice([1e-6, 1e-3, 0.1, 1, 30], (shape[0], 1))
    flat = x.reshape(-1, 32)
    n = flat.shape[0]
    for b in range(0, n, 7):  # ties for q8_0 (d = 1: halves), q4_0 (d = 1: x + 8.5 on an integer)
        flat[b] = (np.arange(32) - 16) + 0.5
        flat[b, 0] = 127.0
    for b in range(1, n, 7):
        flat[b] = np.arange(-8, 8).repeat(2)
        flat[b, 5] = -8.0
    flat[2::7] = 0.0  # all zero
    flat[2::14] = -0.0  # all negative zero: amax is +0 (fabsf), d's fp16 bits 0x0000
    flat[3::7, 1:] = 0.0  # a single non-zero
    flat[4::7] = np.where(np.arange(32) % 2, 1.0, -1.0)  # equal magnitudes: the first one picks the sign
    flat[5::7] = rng.standard_normal((len(flat[5::7]), 32)) * 1e-39  # bf16 subnormals
    flat[6::7, :16] = 0.0  # half-zero (q6_K: zero sub-blocks)
    return gguf_quant.f32_to_bf16(x)


@pytest.mark.parametrize("file_type", ["q8_0", "q4_0"])
def test_every_rounding_edge_matches_llama_quantize(tools, outputs, tmp_path, file_type) -> None:
    src = tmp_path / "edges-bf16.gguf"
    shutil.copyfile(outputs["bf16"], src)
    reader = gguf.GGUFReader(src, "r+")
    values: dict[str, np.ndarray] = {}
    for i, t in enumerate(reader.tensors):
        if t.tensor_type.name == "BF16":
            shape = tuple(int(n) for n in reversed(t.shape.tolist()))
            values[t.name] = _edge_values(shape, i)
            np.asarray(t.data).view(np.uint16).reshape(shape)[...] = values[t.name]
    reader.data.flush()
    del reader
    ref = tensors(quantize(tools, src, tmp_path / "ref.gguf", file_type))
    for name, bits in values.items():
        kind = choose_type(name, bits.shape, file_type)
        kind_name, _, data = ref[name]
        assert kind_name == kind.name, name
        assert gguf_quant.encode(bits, kind).tobytes() == data, f"{name} ({kind.name})"


def test_llama_cpp_runs_m7bs_gguf_with_m7bs_logits(tools, outputs, small_release_src) -> None:
    """Teacher-forced logits within 2% of the largest, and 32 greedy tokens the same (where m7b's top two are not
    a near-tie), inside the release's window (llama.cpp attends to the whole context, m7b through the window: 47
    tokens inside its 64)."""
    prompt, greedy, clear = assert_llama_cpp_logits(tools, outputs["bf16"], small_release_src, seed=5, n_ctx=64)
    llm = llama(tools, outputs["bf16"], 64)
    tokens: list[int] = []
    llm.eval(prompt)
    for _ in range(32):
        tokens.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([tokens[-1]])
    # run freely, llama.cpp's greedy tokens are m7b's up to the first near-tie (after one they may part, rightly)
    first_tie = next((i for i in range(32) if not clear[len(prompt) - 1 + i]), 32)
    assert tokens[:first_tie] == greedy[:first_tie]


@pytest.mark.parametrize("file_type", ["q8_0", "q4_0"])
def test_llama_cpp_runs_the_quantized_files_as_their_blocks_say(tools, outputs, small_release_src, file_type) -> None:
    """llama.cpp's logits on m7b's quantized file are m7b's on the same blocks dequantized (gguf-py), within 2% of
    the largest: the blocks mean to llama.cpp what m7b wrote them to mean."""
    from m7b.runtime.loader import load_runtime
    from m7b.verify.gguf_out import gguf_name

    runtime = load_runtime(small_release_src, torch.device("cpu"), torch.float32)
    reader = gguf.GGUFReader(outputs[file_type])
    by_name = {t.name: t for t in reader.tensors}
    state = runtime.model.state_dict()
    for key, value in state.items():
        t = by_name[gguf_name(key)]
        weights = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        value.copy_(torch.from_numpy(np.array(weights, np.float32)).reshape(value.shape))
    seq = [1, 415, 2936, 9060, 285, 1142, 28705, 28770, 28750, 10575]
    runtime.model.setup_caches(1, len(seq))
    with torch.inference_mode():
        ours = runtime.model(torch.tensor([seq]), torch.arange(len(seq)))[0].numpy()
    llm = llama(tools, outputs[file_type], 32)
    llm.eval(seq)
    theirs = np.asarray(llm.scores[: len(seq)])
    assert np.all(np.abs(theirs - ours).max(axis=1) <= 0.02 * np.abs(ours).max(axis=1))


def test_a_tokenizer_with_odd_pieces_gives_a_file_llama_cpp_loads_with_those_pieces(
    tools, tiny_release: Path, tmp_path: Path
) -> None:
    import sentencepiece

    model = edited(tiny_release / "tokenizer.model", pieces=ODD_PIECES, types={1010: 4, 1011: 3, 1012: 5})
    sp = sentencepiece.SentencePieceProcessor(model_file=str(model))
    out = convert_release(tiny_release, tmp_path / "odd", "gguf-bf16", name="odd").out
    reader = gguf.GGUFReader(out / "odd-BF16.gguf")
    tokens = reader.fields["tokenizer.ggml.tokens"]
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    for i in (*ODD_PIECES, 1010, 1011, 1012):
        assert bytes(tokens.parts[tokens.data[i]]) == sp.id_to_piece(i).encode("utf-8")
    assert (types[1010], types[1011], types[1012]) == (1, 3, 5)  # user-defined is normal to sentencepiece's API
    llama_cpp = bindings(tools)
    llm = llama_cpp.Llama(str(out / "odd-BF16.gguf"), vocab_only=True, verbose=False)
    for i in ODD_PIECES:
        assert llm._model.token_get_text(i) == ODD_PIECES[i], i
    assert llm.tokenize(b"hello world", add_bos=True)[0] == 1
