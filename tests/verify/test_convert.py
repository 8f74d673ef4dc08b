"""`convert`: native and hf layouts, deterministic, atomic, checked; hf loads in transformers offline."""

from __future__ import annotations

import errno
import filecmp
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from verify_helpers import install_release

from m7b.errors import MismatchError, StorageError
from m7b.manifests.architecture import load_params
from m7b.store import Store
from m7b.verify import hf_layout
from m7b.verify.checkpoint_load import load_checkpoint
from m7b.verify.convert import convert_release, file_sha256
from m7b.verify.license import CANONICAL_SHA256
from m7b.verify.sums import parse_sums, verify_converted


def _sums_match(folder: Path) -> None:
    sums = parse_sums(folder / "SHA256SUMS")
    assert set(sums) == {p.name for p in folder.iterdir()} - {"SHA256SUMS"}
    for name, digest in sums.items():
        assert file_sha256(folder / name) == digest


def test_native_layout(converted_tiny: dict[str, Path], tiny_release_src: Path) -> None:
    out = converted_tiny["native"]
    assert {p.name for p in out.iterdir()} == {
        "consolidated.safetensors",
        "params.json",
        "tokenizer.model",
        "LICENSE",
        "SHA256SUMS",
    }
    _sums_match(out)
    assert file_sha256(out / "LICENSE") == CANONICAL_SHA256
    source = load_checkpoint(tiny_release_src / "consolidated.00.pth")
    with safe_open(str(out / "consolidated.safetensors"), framework="pt") as f:
        meta = f.metadata()
        assert meta["license"] == "Apache-2.0"
        assert meta["source_sha256"] == file_sha256(tiny_release_src / "consolidated.00.pth")
        assert list(f.keys()) == sorted(source)
        for key in source:
            assert torch.equal(f.get_tensor(key).view(torch.uint8), source[key].view(torch.uint8))


def test_hf_layout_loads_in_transformers_offline(
    converted_tiny: dict[str, Path], tiny_release_src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = converted_tiny["hf"]
    _sums_match(out)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    config = json.loads((out / "config.json").read_text())
    arch = load_params(tiny_release_src / "params.json")
    assert config["architectures"] == ["MistralForCausalLM"] and config["rope_theta"] == 10000.0
    assert config["sliding_window"] == arch.sliding_window and config["torch_dtype"] == "bfloat16"
    assert "license: apache-2.0" in (out / "README.md").read_text()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "MistralForCausalLM" and model.dtype == torch.bfloat16
    source = load_checkpoint(tiny_release_src / "consolidated.00.pth")
    loaded = model.state_dict()
    for key, tensor in source.items():
        heads = hf_layout.rotary_heads(key, arch)
        expected = hf_layout.permute(tensor, heads) if heads else tensor
        assert torch.equal(loaded[hf_layout.hf_key(key)].view(torch.uint8), expected.view(torch.uint8)), key


def test_hf_tokenizer_loads_in_transformers_and_matches_sentencepiece(
    converted_tiny: dict[str, Path], tiny_release_src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AutoTokenizer loads the hf folder offline (from tokenizer.json: no protobuf needed) and gives
    sentencepiece's ids for the release's tokenizer.model, `<s>` first, and decodes back to the text."""
    import sentencepiece as spm

    out = converted_tiny["hf"]
    assert (out / "tokenizer.json").is_file()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    sp = spm.SentencePieceProcessor(model_file=str(tiny_release_src / "tokenizer.model"))
    for text in ("Hello world, this is m7b.", "  two spaces\n\nand a 🦙", "naïve façade 日本語 3.14159"):
        ids = tok(text).input_ids
        assert ids == [sp.bos_id(), *sp.encode(text)]
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_permutation_maps_interleaved_rotary_onto_half_split_rotary() -> None:
    """Attention scores from Mistral's interleaved-pair RoPE equal HF's rotate_half RoPE on permuted weights."""
    torch.manual_seed(0)
    heads, head_dim, dim, seq = 2, 8, 16, 5
    wq, wk, x = torch.randn(heads * head_dim, dim), torch.randn(heads * head_dim, dim), torch.randn(seq, dim)
    freqs = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.outer(torch.arange(seq).float(), freqs)  # (seq, head_dim/2)

    def mistral(w: torch.Tensor) -> torch.Tensor:
        v = (x @ w.T).view(seq, heads, head_dim // 2, 2)
        rotated = torch.view_as_complex(v.contiguous()) * torch.polar(torch.ones_like(angles), angles)[:, None, :]
        return torch.view_as_real(rotated).reshape(seq, heads, head_dim)

    def hf(w: torch.Tensor) -> torch.Tensor:
        v = (x @ w.T).view(seq, heads, head_dim)
        cos, sin = torch.cat([angles.cos()] * 2, -1)[:, None, :], torch.cat([angles.sin()] * 2, -1)[:, None, :]
        half = torch.cat([-v[..., head_dim // 2 :], v[..., : head_dim // 2]], -1)
        return v * cos + half * sin

    scores_mistral = torch.einsum("qhd,khd->hqk", mistral(wq), mistral(wk))
    scores_hf = torch.einsum("qhd,khd->hqk", hf(hf_layout.permute(wq, heads)), hf(hf_layout.permute(wk, heads)))
    assert torch.allclose(scores_mistral, scores_hf, atol=1e-4)
    assert torch.equal(hf_layout.unpermute(hf_layout.permute(wq, heads), heads), wq)


@pytest.mark.parametrize("layout", ["native", "hf"])
def test_reruns_are_byte_identical(
    converted_tiny: dict[str, Path], tiny_release_src: Path, tmp_path: Path, layout: str
) -> None:
    again = convert_release(tiny_release_src, tmp_path / layout, layout, max_shard_size=3_000_000).out
    first = converted_tiny[layout]
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    match, mismatch, errors = filecmp.cmpfiles(first, again, names, shallow=False)
    assert mismatch == [] and errors == []


class _FullDisk:
    """A file whose writes fail with ENOSPC once `limit` bytes have been written."""

    def __init__(self, fh, limit: int) -> None:
        self.fh, self.limit, self.written = fh, limit, 0

    def write(self, data) -> int:
        n = len(memoryview(data).cast("B"))
        if self.written + n > self.limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += n
        return self.fh.write(data)

    def fileno(self) -> int:
        return self.fh.fileno()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()


class _FlippingDisk(_FullDisk):
    """A file that silently stores one flipped bit at byte `limit` (what the read-back check must catch)."""

    def write(self, data) -> int:
        raw = bytearray(memoryview(data).cast("B"))
        if self.written <= self.limit < self.written + len(raw):
            raw[self.limit - self.written] ^= 1
        self.written += len(raw)
        return self.fh.write(raw)


def _faulty_disk(monkeypatch: pytest.MonkeyPatch, disk: type[_FullDisk], limit: int, path: str) -> None:
    """Every byte convert stores goes through `disk`: written from a buffer (`path="write"`: no in-kernel copy), or
    copied in the kernel (`path="copy"`: copy_file_range, which then fails or flips like the disk would)."""
    import m7b.verify.safetensors_out as writer

    files: list[_FullDisk] = []

    def opened(path_, mode, **kw):
        files.append(disk(open(path_, mode, **kw), limit))  # noqa: SIM115 (closed by the writer)
        return files[-1]

    def copy(src: int, dst: int, count: int, offset_src: int) -> int:
        return files[-1].write(os.pread(src, count, offset_src))

    monkeypatch.setattr(writer, "open", opened, raising=False)
    monkeypatch.setattr(writer, "_copy_file_range", None if path == "write" else copy)


@pytest.mark.parametrize("path", ["write", "copy"])
@pytest.mark.parametrize("layout", ["native", "hf"])
def test_full_disk_leaves_nothing_under_a_final_name(
    tiny_release_src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str, path: str
) -> None:
    _faulty_disk(monkeypatch, _FullDisk, 2_000_000, path)
    parent = tmp_path / "converted"
    parent.mkdir()
    with pytest.raises(StorageError, match="disk is full"):
        convert_release(tiny_release_src, parent / layout, layout, max_shard_size=3_000_000)
    assert list(parent.iterdir()) == []


@pytest.mark.parametrize("path", ["write", "copy"])
@pytest.mark.parametrize("layout", ["native", "hf"])
def test_read_back_check_catches_a_byte_the_disk_changed(
    tiny_release_src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str, path: str
) -> None:
    _faulty_disk(monkeypatch, _FlippingDisk, 1_000_000, path)
    with pytest.raises(MismatchError, match="read back differs"):
        convert_release(tiny_release_src, tmp_path / layout, layout)
    assert not (tmp_path / layout).exists() and list(tmp_path.iterdir()) == []


def test_a_file_system_without_in_kernel_copy_gets_the_bytes_written(
    tiny_release_src: Path, tmp_path: Path, converted_tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """copy_file_range refused (EXDEV, as across devices on some kernels): the same bytes are written instead."""
    import m7b.verify.safetensors_out as writer

    calls = []

    def refuse(*args) -> int:
        calls.append(args)
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(writer, "_copy_file_range", refuse)
    out = convert_release(tiny_release_src, tmp_path / "native", "native").out
    assert len(calls) == 1  # tried once, then written for the rest of the file
    assert filecmp.cmp(
        out / "consolidated.safetensors", converted_tiny["native"] / "consolidated.safetensors", shallow=False
    )


def test_convert_refuses_a_checkpoint_that_disagrees_with_params(tiny_release: Path, tmp_path: Path) -> None:
    params = json.loads((tiny_release / "params.json").read_text())
    params["hidden_dim"] += 2
    (tiny_release / "params.json").write_text(json.dumps(params))
    with pytest.raises(MismatchError, match="feed_forward.w1.weight has shape"):
        convert_release(tiny_release, tmp_path / "out", "native")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_verify_then_convert_then_verify_the_converted_folder(cli, m7b_home: Path, tiny_release_src: Path) -> None:
    install_release(m7b_home, tiny_release_src, "tiny-test")
    assert cli("verify", "tiny-test").code == 0
    result = cli("convert", "tiny-test", "--to", "native", "--json")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    report = json.loads(Store(m7b_home).report_path("tiny-test").read_text())
    ckpt = next(f for f in report["files"] if f["path"] == "consolidated.00.pth")
    assert doc["verified_source"] is True and doc["source_sha256"] == ckpt["sha256"]
    out = Store(m7b_home).converted_dir("tiny-test", "native")
    assert Path(doc["out"]) == out and Store(m7b_home).converted_layouts("tiny-test") == ["native"]
    assert cli("verify", out).code == 0
    with open(out / "consolidated.safetensors", "r+b") as fh:
        fh.seek(-100, os.SEEK_END)
        b = fh.read(1)
        fh.seek(-100, os.SEEK_END)
        fh.write(bytes([b[0] ^ 1]))
    tampered = cli("verify", out)
    assert tampered.code == 5 and "consolidated.safetensors" in tampered.stderr
    again = cli("convert", "tiny-test", "--to", "native")
    assert again.code == 8 and "not empty" in again.stderr


def test_verify_converted_reports_unlisted_files(converted_tiny: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(converted_tiny["hf"], tmp_path / "hf"))
    (copy / "extra.bin").write_bytes(b"x")
    report = verify_converted(copy)
    assert report.exit_code == 5 and any(f.path == "extra.bin" for f in report.failures())


def test_convert_onto_another_file_system_gives_the_same_bytes(
    tiny_release_src: Path, converted_tiny: dict[str, Path]
) -> None:
    """Out on tmpfs, source on the test disk: the kernel refuses the cross-device copy (EXDEV) for real and the
    bytes are written instead, identical to a same-disk conversion."""
    import tempfile

    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tiny_release_src).st_dev:
        pytest.skip("needs /dev/shm on another file system than the test release")
    with tempfile.TemporaryDirectory(dir=shm) as tmp:
        out = convert_release(tiny_release_src, Path(tmp) / "native", "native").out
        assert filecmp.cmp(
            out / "consolidated.safetensors", converted_tiny["native"] / "consolidated.safetensors", shallow=False
        )


def test_cli_convert_of_a_folder_outside_the_store_writes_beside_it(cli, m7b_home: Path, tiny_release: Path) -> None:
    """A folder that merely shares a store release's name must not become that release's converted weights."""
    result = cli("convert", tiny_release, "--to", "native", "--json")
    assert result.code == 0, result.stderr
    beside = tiny_release.parent / f"{tiny_release.name}-native"
    assert Path(json.loads(result.stdout)["out"]) == beside and (beside / "SHA256SUMS").is_file()
    assert not Store(m7b_home).converted_dir(tiny_release.name, "native").exists()
