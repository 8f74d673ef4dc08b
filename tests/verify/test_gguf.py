"""`m7b convert --to gguf`: the folder a user gets (one .gguf with the proof in its metadata, LICENSE, an Ollama
Modelfile, a model card, SHA256SUMS, provenance.json), the types llama.cpp's tools choose, and refusals that leave
nothing behind. The comparisons with llama.cpp itself are in test_gguf_llamacpp.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from odd_tokenizers import REFUSED_PIECES, edited

from m7b.errors import InvalidInputError
from m7b.manifests.architecture import load_params
from m7b.store import GGUF_LAYOUTS
from m7b.verify import gguf_quant
from m7b.verify.convert import convert_release
from m7b.verify.gguf_out import GGUF_LAYOUTS as OUT_LAYOUTS
from m7b.verify.gguf_out import gguf_name
from m7b.verify.gguf_quant import F16, F32, FILE_TYPES, Q4_0, Q6_K, Q8_0, choose_type
from m7b.verify.sums import parse_sums

IH = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def tiny_gguf(tiny_release_src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gguf") / "q8"
    convert_release(tiny_release_src, out, "gguf-q8_0", name="mistral-tiny", info_hash=IH, verdict="ok")
    return out


def fields(path: Path) -> dict[str, object]:
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def test_the_folder_holds_the_gguf_its_modelfile_card_and_license_all_in_sha256sums(tiny_gguf: Path) -> None:
    names = sorted(p.name for p in tiny_gguf.iterdir())
    assert names == ["LICENSE", "Modelfile", "README.md", "SHA256SUMS", "mistral-tiny-Q8_0.gguf"]
    sums = parse_sums(tiny_gguf / "SHA256SUMS")
    assert set(sums) == set(names) - {"SHA256SUMS"}
    for name, digest in sums.items():
        assert hashlib.sha256((tiny_gguf / name).read_bytes()).hexdigest() == digest
    modelfile = (tiny_gguf / "Modelfile").read_text()
    assert "FROM ./mistral-tiny-Q8_0.gguf\n" in modelfile
    assert 'LICENSE """' in modelfile and "Apache License" in modelfile and "Version 2.0" in modelfile
    assert "PARAMETER num_ctx 16\n" in modelfile  # the tiny release's window: llama.cpp's full attention agrees
    card = (tiny_gguf / "README.md").read_text()
    assert "license: apache-2.0" in card and "sliding window" in card and IH in card


def test_the_metadata_carries_the_proof(tiny_gguf: Path, tiny_release_src: Path) -> None:
    meta = fields(tiny_gguf / "mistral-tiny-Q8_0.gguf")
    checkpoint = hashlib.sha256((tiny_release_src / "consolidated.00.pth").read_bytes()).hexdigest()
    assert meta["general.license"] == "apache-2.0"
    assert meta["general.architecture"] == "llama" and meta["general.name"] == "mistral-tiny"
    assert meta["m7b.release"] == "mistral-tiny" and meta["m7b.torrent.info_hash"] == IH
    assert meta["general.source.url"] == f"magnet:?xt=urn:btih:{IH}"
    assert meta["m7b.checkpoint.sha256"] == checkpoint and meta["m7b.verify_verdict"] == "ok"
    assert meta["m7b.sliding_window"] == 16 and "whole context" in str(meta["m7b.note"])
    assert meta["general.file_type"] == FILE_TYPES["q8_0"][0]


def test_wq_and_wk_keep_the_checkpoints_rows(tiny_release_src: Path, tmp_path: Path) -> None:
    """llama.cpp's rotary takes Mistral's interleaved rows: the converter undoes the hf permutation, m7b never
    applies it (the bf16 tensors are the checkpoint's bytes)."""
    import torch

    out = convert_release(tiny_release_src, tmp_path / "bf16", "gguf-bf16", name="t").out
    reader = gguf.GGUFReader(out / "t-BF16.gguf")
    tensors = {t.name: t for t in reader.tensors}
    state = torch.load(tiny_release_src / "consolidated.00.pth", weights_only=True, mmap=True)
    for key, value in state.items():
        t = tensors[gguf_name(key)]
        want = value.float().numpy() if value.dim() == 1 else value.view(torch.int16).numpy().view(np.uint16)
        got = np.asarray(t.data)
        got = (got.view(np.uint16) if t.tensor_type.name == "BF16" else got).reshape(value.shape)
        assert np.array_equal(got, want), key


def test_the_store_and_the_writer_know_the_same_gguf_types() -> None:
    assert GGUF_LAYOUTS == OUT_LAYOUTS == tuple(f"gguf-{t}" for t in FILE_TYPES)


@pytest.mark.parametrize(
    ("name", "shape", "file_type", "expected"),
    [
        ("blk.0.attn_norm.weight", (4096,), "q4_0", F32),
        ("output_norm.weight", (4096,), "bf16", F32),
        ("blk.0.attn_q.weight", (4096, 4096), "f16", F16),
        ("blk.0.attn_q.weight", (4096, 4096), "q8_0", Q8_0),
        ("blk.0.ffn_down.weight", (4096, 14336), "q4_0", Q4_0),
        ("token_embd.weight", (32000, 4096), "q4_0", Q4_0),
        ("output.weight", (32000, 4096), "q4_0", Q6_K),  # llama-quantize: the output layer gets more bits
        ("output.weight", (32000, 4096), "q8_0", Q8_0),
        ("output.weight", (32000, 96), "q4_0", Q8_0),  # rows not a multiple of 256: q6_K falls back to q8_0
        ("blk.0.attn_q.weight", (64, 48), "q8_0", F16),  # rows not a multiple of 32: no block type fits
    ],
)
def test_tensor_types_are_llama_quantizes_choices(name, shape, file_type, expected) -> None:
    assert choose_type(name, shape, file_type) is expected


def test_a_release_whose_rows_do_not_fill_blocks_still_converts(tmp_path: Path, tiny_release_src: Path) -> None:
    """An unusual shape (head_dim 12, dim 48: rows not a multiple of 32) gets llama-quantize's f16 fallback."""
    from m7b.manifests.architecture import Architecture
    from m7b.synth import PRESETS, synthesize

    PRESETS["odd-test"] = Architecture(
        dim=48, n_layers=1, head_dim=12, hidden_dim=80, n_heads=4, n_kv_heads=2, norm_eps=1e-5, sliding_window=8,
        vocab_size=32000,
    )  # fmt: skip
    try:
        src = synthesize(tmp_path / "odd", "odd-test", seed=3).path
    finally:
        del PRESETS["odd-test"]
    out = convert_release(src, tmp_path / "q4", "gguf-q4_0", name="odd").out
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out / "odd-Q4_0.gguf").tensors}
    assert types["blk.0.attn_q.weight"] == "F16" and types["blk.0.ffn_down.weight"] == "F16"  # 48, 80 columns
    assert types["output.weight"] == "F16" and types["blk.0.attn_norm.weight"] == "F32"
    arch = load_params(src / "params.json")
    assert len(types) == arch.tensor_count


def test_encoders_agree_with_gguf_py_on_random_rows() -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 256)) * rng.uniform(0.001, 10, (64, 1))).astype(np.float32)
    x[3] = 0  # an all-zero row: d = 0
    bits = gguf_quant.f32_to_bf16(x)
    values = gguf_quant.bf16_to_f32(bits)
    for kind, ref in ((Q8_0, gguf.GGMLQuantizationType.Q8_0), (Q4_0, gguf.GGMLQuantizationType.Q4_0)):
        assert np.array_equal(gguf_quant.encode(bits, kind), gguf.quants.quantize(values, ref).reshape(-1))
    reference_bf16 = gguf.quants.quantize(x, gguf.GGMLQuantizationType.BF16).view(np.uint16)
    assert np.array_equal(gguf_quant.f32_to_bf16(x), reference_bf16)
    q6 = gguf_quant.encode(bits, Q6_K)
    back = gguf.quants.dequantize(q6.reshape(64, -1), gguf.GGMLQuantizationType.Q6_K)
    step = np.abs(values).max(axis=1, keepdims=True) / 31
    assert np.all(np.abs(back - values) <= step * 0.75 + 1e-12)


def test_an_unknown_type_is_refused_before_anything_is_written(cli, tiny_release: Path, tmp_path: Path) -> None:
    for args in (["--to", "gguf", "--type", "q5_k"], ["--to", "hf", "--type", "q8_0"], ["--to", "gguf-q8_0"]):
        result = cli("convert", tiny_release, *args, "--out", tmp_path / "out")
        assert result.code == 4, result.stderr
        assert "--type" in result.stderr or "--to" in result.stderr
        assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_verify_convert_to_gguf_then_verify_the_folder(cli, m7b_home: Path, tiny_release_src: Path) -> None:
    import shutil

    shutil.copytree(tiny_release_src, m7b_home / "releases" / "mistral-7b-v0.1")
    result = cli("convert", "mistral-7b-v0.1", "--to", "gguf", "--type", "q4_0", "--json")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["layout"] == "gguf-q4_0" and doc["gguf"]["type"] == "q4_0"
    assert doc["gguf"]["llama_cpp_attention"] == "whole context" and doc["gguf"]["sliding_window"] == 16
    assert any("sliding window" in n for n in doc["notes"])
    out = Path(doc["out"])
    assert out == m7b_home / "converted" / "mistral-7b-v0.1" / "gguf-q4_0"
    assert json.loads((out / "provenance.json").read_text())["predicate"]["layout"] == "gguf-q4_0"
    verified = cli("verify", out, "--json")
    assert verified.code == 0, verified.stdout + verified.stderr
    layout = [f for f in json.loads(verified.stdout)["findings"] if f["check"] == "layout"]
    assert layout and all(f["status"] == "ok" for f in layout)
    text = cli("convert", "mistral-7b-v0.1", "--to", "gguf", "--out", m7b_home.parent / "bf16")
    assert text.code == 0 and "whole context" in text.stderr and "ollama create" in text.stdout
    listed = cli("list", "--json")
    assert listed.code == 0 and "gguf-q4_0" in listed.stdout


def test_verify_of_a_damaged_gguf_folder_says_so(tiny_gguf: Path, tmp_path: Path) -> None:
    from m7b.verify.gguf_out import check_gguf_folder

    copy = tmp_path / "copy"
    copy.mkdir()
    for p in tiny_gguf.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    assert [f.status.value for f in check_gguf_folder(copy, "gguf-q8_0")] == ["ok"]
    assert [f.status.value for f in check_gguf_folder(copy, "gguf-q4_0")] == ["mismatch"]  # another type's
    gguf_file = copy / "mistral-tiny-Q8_0.gguf"
    gguf_file.write_bytes(gguf_file.read_bytes()[:5000])
    findings = check_gguf_folder(copy, "gguf-q8_0")
    assert [f.status.value for f in findings] == ["invalid"] and "convert again" in findings[0].message


def test_a_tokenizer_with_more_pieces_than_the_model_has_rows_is_refused(tiny_release: Path, tmp_path: Path) -> None:

    edited(tiny_release / "tokenizer.model", add=["extra-piece"])
    with pytest.raises(InvalidInputError, match="32,001 pieces"):
        convert_release(tiny_release, tmp_path / "out", "gguf-bf16")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("piece", list(REFUSED_PIECES), ids=list(REFUSED_PIECES))
def test_a_piece_sentencepiece_refuses_is_a_clear_error_with_nothing_written(
    tiny_release: Path, tmp_path: Path, piece: str
) -> None:
    edited(tiny_release / "tokenizer.model", pieces={1004: REFUSED_PIECES[piece]})
    with pytest.raises(InvalidInputError, match="tokenizer.model") as info:
        convert_release(tiny_release, tmp_path / "out", "gguf-q4_0")
    assert "restore the release's tokenizer.model" in str(info.value)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == [tmp_path / "release"]


def test_a_tensor_gguf_has_no_name_for_is_refused_clearly(monkeypatch) -> None:
    """A checkpoint key outside llama.cpp's llama tables (dense Mistral, Mixtral) is refused by name, never a
    KeyError; a dtype GGUF conversion does not read is refused before anything is written."""
    from m7b.errors import UnsupportedArchitectureError
    from m7b.manifests.architecture import Architecture
    from m7b.synth import PRESETS
    from m7b.verify.checkpoint_index import TensorRecord
    from m7b.verify.gguf_out import plan_tensors

    arch = PRESETS["mixtral-tiny"]
    state = {k: TensorRecord(k, "bfloat16", 2, s, (1,) * len(s), 0) for k, s in arch.tensor_shapes().items()}
    assert len(plan_tensors(arch, state, "bf16")) == 3 + 2 * 10  # per layer: 4 attention, gate, 3 stacked, 2 norms
    odd = "layers.0.feed_forward.shared_expert.w1.weight"
    monkeypatch.setattr(Architecture, "tensor_shapes", lambda self: {odd: (128, 64)})  # a key the tables lack
    with pytest.raises(UnsupportedArchitectureError, match="shared_expert"):
        plan_tensors(arch, {odd: TensorRecord(odd, "bfloat16", 2, (128, 64), (64, 1), 0)}, "bf16")
    monkeypatch.undo()
    key = "layers.0.attention.wq.weight"
    bad = {**state, key: TensorRecord(key, "int8", 1, (64, 64), (64, 1), 0)}
    with pytest.raises(Exception, match="bfloat16, float16 or float32"):
        plan_tensors(arch, bad, "q8_0")
