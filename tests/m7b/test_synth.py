from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
import torch

from m7b.manifests.architecture import load_params
from m7b.synth import PRESETS, TOKENIZER_SHA256, synthesize
from m7b.torchzip import TensorSpec, state_dict_pickle, write_checkpoint

LAYER_KEYS = {
    "attention.wq.weight",
    "attention.wk.weight",
    "attention.wv.weight",
    "attention.wo.weight",
    "feed_forward.w1.weight",
    "feed_forward.w2.weight",
    "feed_forward.w3.weight",
    "attention_norm.weight",
    "ffn_norm.weight",
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_layout_is_the_original_four_files(tiny_release_src: Path) -> None:
    assert sorted(p.name for p in tiny_release_src.iterdir()) == [
        "RELEASE",
        "consolidated.00.pth",
        "params.json",
        "tokenizer.model",
    ]
    assert sha256(tiny_release_src / "tokenizer.model") == TOKENIZER_SHA256
    assert (tiny_release_src / "tokenizer.model").stat().st_size == 493443
    assert "SYNTHETIC" in (tiny_release_src / "RELEASE").read_text()


def test_checkpoint_loads_weights_only_with_exactly_the_implied_keys(tiny_release_src: Path) -> None:
    arch = load_params(tiny_release_src / "params.json")
    assert json.loads((tiny_release_src / "params.json").read_text())["vocab_size"] == 32000
    state = torch.load(tiny_release_src / "consolidated.00.pth", weights_only=True, mmap=True)
    assert {k: tuple(v.shape) for k, v in state.items()} == arch.tensor_shapes()
    assert all(v.dtype == torch.bfloat16 for v in state.values())
    layer_keys = {k.split(".", 2)[2] for k in state if k.startswith("layers.")}
    assert layer_keys == LAYER_KEYS
    assert set(state) - {k for k in state if k.startswith("layers.")} == {
        "tok_embeddings.weight",
        "norm.weight",
        "output.weight",
    }
    assert all(torch.isfinite(v.float()).all() for v in state.values())


def test_checkpoint_records_are_aligned_like_torch_writes_them(tiny_release_src: Path) -> None:
    with zipfile.ZipFile(tiny_release_src / "consolidated.00.pth") as zf:
        names = zf.namelist()
        assert names[0] == "consolidated/data.pkl"
        assert {"consolidated/byteorder", "consolidated/version"} <= set(names)
        for info in zf.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            assert (info.header_offset + 30 + len(info.filename) + len(info.extra)) % 64 == 0


def test_pickle_is_the_one_torch_save_writes(tmp_path: Path) -> None:
    specs = [TensorSpec("a.weight", (3, 4)), TensorSpec("b", (5,)), TensorSpec("c", (2, 2), torch.float32)]
    tensors = {s.key: torch.randn(s.shape).to(s.dtype) for s in specs}
    torch.save(tensors, tmp_path / "ref.pth")
    with zipfile.ZipFile(tmp_path / "ref.pth") as zf:
        reference = zf.read("ref/data.pkl")
    assert state_dict_pickle(specs) == reference
    write_checkpoint(tmp_path / "mine.pth", specs, lambda s: tensors[s.key])
    loaded = torch.load(tmp_path / "mine.pth", weights_only=True)
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path: Path, tiny_release_src) -> None:
    again = synthesize(tmp_path / "again", "tiny", seed=0).path
    other = synthesize(tmp_path / "other", "tiny", seed=1).path
    for name in ("RELEASE", "consolidated.00.pth", "params.json", "tokenizer.model"):
        assert sha256(again / name) == sha256(tiny_release_src / name)
    assert sha256(other / "consolidated.00.pth") != sha256(again / "consolidated.00.pth")


@pytest.mark.slow
def test_cli_synth_json_and_refusals(cli, tmp_path: Path) -> None:
    result = cli("release", "synth", tmp_path / "r", "--preset", "tiny", "--seed", "3", "--json")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["parameters"] == PRESETS["tiny"].parameter_count()
    before = sha256(tmp_path / "r" / "consolidated.00.pth")

    again = cli("release", "synth", tmp_path / "r")
    assert again.code == 8 and "exists and is not empty" in again.stderr
    assert sha256(tmp_path / "r" / "consolidated.00.pth") == before

    unknown = cli("release", "synth", tmp_path / "x", "--preset", "huge")
    assert unknown.code == 4 and "unknown preset 'huge'" in unknown.stderr
    assert not (tmp_path / "x").exists()


def test_an_interrupted_synth_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import m7b.synth

    def failing(spec, seed):
        if spec.key == "output.weight":
            raise KeyboardInterrupt
        return torch.zeros(spec.shape, dtype=spec.dtype)

    monkeypatch.setattr(m7b.synth, "synth_tensor", failing)
    with pytest.raises(KeyboardInterrupt):
        synthesize(tmp_path / "out", "tiny")
    assert list(tmp_path.iterdir()) == []


def test_presets_keep_the_real_vocabulary_and_bench_2g_is_over_2_gib() -> None:
    assert {a.vocab_size for a in PRESETS.values()} == {32000}
    assert PRESETS["bench-2g"].parameter_count() * 2 >= 2 << 30
    assert PRESETS["mistral-7b"].parameter_count() == 7_241_732_096
