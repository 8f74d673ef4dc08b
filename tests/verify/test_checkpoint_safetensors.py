"""A release's `consolidated.safetensors` (Mixtral 8x22B's format) is a release checkpoint: its header is read
strictly and bounded, checked against params.json before anything is allocated, and every hostile header is
refused with a clear error (exit 5) by verify, convert and run, with nothing written."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from m7b.errors import MismatchError, NotFoundError
from m7b.manifests.architecture import load_params
from m7b.verify.checkpoint_index import index_checkpoint, mapped, tensor_bytes
from m7b.verify.checkpoint_safetensors import (
    SAFETENSORS_CHECKPOINT,
    index_safetensors,
    read_header,
    release_checkpoint,
)

ST = SAFETENSORS_CHECKPOINT


def _write(path: Path, header: Any, body: bytes, length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + body)
    return path


def _two() -> dict[str, Any]:
    return {
        "a": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
    }


def test_the_release_checkpoint_indexes_the_same_tensors_as_the_pth(mixtral_tiny_src, mixtral_tiny_st_src) -> None:
    arch = load_params(mixtral_tiny_st_src / "params.json")
    records = index_safetensors(mixtral_tiny_st_src / ST, arch)
    pth = index_checkpoint(mixtral_tiny_src / "consolidated.00.pth")
    assert len(records) == arch.tensor_count == 41 and set(records) == set(pth)
    with mapped(mixtral_tiny_st_src / ST) as st, mapped(mixtral_tiny_src / "consolidated.00.pth") as pt:
        for key in ("layers.1.feed_forward.experts.3.w2.weight", "layers.0.feed_forward.gate.weight"):
            assert bytes(tensor_bytes(st.view, records[key])) == bytes(tensor_bytes(pt.view, pth[key]))
    assert release_checkpoint(mixtral_tiny_st_src).name == ST


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b"\x01\x02"), "shorter than a safetensors header"),
        (lambda p: _write(p, _two(), bytes(16), length=10**9), "header length is 1,000,000,000"),
        (lambda p: _write(p, _two(), bytes(16), length=0), "header length is 0"),
        (lambda p: _write(p, b"{not json", bytes(16)), "not valid JSON"),
        (lambda p: _write(p, [1, 2], bytes(16)), "JSON list, expected an object"),
        (lambda p: _write(p, b'{"a": {}, "a": {}}', b""), "names 'a' twice"),
        (lambda p: _write(p, _two() | {"a": {**_two()["a"], "dtype": "Q4"}}, bytes(16)), "dtype 'Q4'"),
        (lambda p: _write(p, _two() | {"a": {**_two()["a"], "shape": [-2, -2]}}, bytes(16)), "shape must be"),
        (lambda p: _write(p, _two() | {"a": {**_two()["a"], "shape": [1] * 9}}, bytes(16)), "at most 8 sizes"),
        (lambda p: _write(p, _two() | {"a": {**_two()["a"], "extra": 1}}, bytes(16)), "expected exactly dtype"),
        (lambda p: _write(p, _two() | {"a": {**_two()["a"], "data_offsets": [0]}}, bytes(16)), "data_offsets must"),
        (lambda p: _write(p, _two() | {"a": {**_two()["a"], "shape": [4, 4]}}, bytes(16)), "takes 32"),
        (lambda p: _write(p, _two() | {"b": {**_two()["b"], "data_offsets": [12, 20]}}, bytes(20)), "gap"),
        (lambda p: _write(p, _two() | {"b": {**_two()["b"], "data_offsets": [4, 12]}}, bytes(16)), "overlaps"),
        (lambda p: _write(p, _two(), bytes(24)), "followed by bytes no tensor owns"),
        (lambda p: _write(p, _two(), bytes(12)), "past the end of the file"),
        (
            lambda p: _write(p, {"a": {"dtype": "F32", "shape": [2**40, 2**6], "data_offsets": [0, 2**48]}}, bytes(16)),
            "past the end of the file",
        ),
        (lambda p: _write(p, _two() | {"__metadata__": {"k": 1}}, bytes(16)), "__metadata__"),
    ],
)
def test_a_hostile_header_is_refused_with_what_was_expected(tmp_path: Path, make: Callable, message: str) -> None:
    path = tmp_path / ST
    make(path)
    with pytest.raises(MismatchError, match=message) as info:
        index_safetensors(path)
    assert info.value.exit_code == 5 and str(path) in str(info.value)


def test_the_header_read_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A length field of 2**63 is refused from the 8 bytes alone: nothing else of the file is read."""
    path = _write(tmp_path / ST, b"x" * 64, b"", length=2**63)
    reads: list[int] = []
    real_open = open

    def counting_open(*args: Any, **kwargs: Any) -> Any:
        fh = real_open(*args, **kwargs)
        real_read = fh.read

        def read(n: int = -1) -> bytes:
            reads.append(n)
            return real_read(n)

        fh.read = read
        return fh

    monkeypatch.setattr("builtins.open", counting_open)
    with pytest.raises(MismatchError, match="header length"):
        read_header(path)
    assert reads == [8]


def test_params_that_disagree_are_refused_before_records_are_built(mixtral_tiny_st_src, tmp_path: Path) -> None:
    params = json.loads((mixtral_tiny_st_src / "params.json").read_text())
    folder = Path(shutil.copytree(mixtral_tiny_st_src, tmp_path / "r"))
    (folder / "params.json").write_text(json.dumps({**params, "n_layers": 10**6}))
    with pytest.raises(MismatchError, match=r"params.json implies 19,000,003 \(3 \+ 19 per layer\)"):
        index_safetensors(folder / ST, load_params(folder / "params.json"))
    (folder / "params.json").write_text(json.dumps({**params, "hidden_dim": 96}))
    with pytest.raises(
        MismatchError, match=r"experts\.0\.w1\.weight has shape \(128, 64\), params.json implies \(96, 64\)"
    ):
        index_safetensors(folder / ST, load_params(folder / "params.json"))


def test_a_folder_shipping_both_or_neither_checkpoint_is_named(mixtral_tiny_st_src, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(mixtral_tiny_st_src, tmp_path / "r"))
    (folder / "consolidated.00.pth").write_bytes(b"PK")
    with pytest.raises(MismatchError, match="holds both"):
        release_checkpoint(folder)
    (folder / "consolidated.00.pth").unlink()
    (folder / ST).unlink()
    with pytest.raises(NotFoundError, match="holds neither"):
        release_checkpoint(folder)


@pytest.mark.slow
def test_verify_convert_run_and_release_create_refuse_a_damaged_safetensors_release(
    cli, m7b_home: Path, mixtral_tiny_st_src: Path, tmp_path: Path
) -> None:
    folder = Path(shutil.copytree(mixtral_tiny_st_src, tmp_path / "release"))
    data = bytearray((folder / ST).read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    key = "layers.0.feed_forward.experts.1.w3.weight"
    start, end = header[key]["data_offsets"]
    header[key]["data_offsets"] = [start - 2, end - 2]  # overlaps the tensor before it
    raw = json.dumps(header).encode()
    (folder / ST).write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length :])
    verify = cli("verify", folder, "--json")
    assert verify.code == 5
    found = [f for f in json.loads(verify.stdout)["findings"] if f["check"] == "checkpoint"]
    assert found and found[0]["status"] == "mismatch" and "overlaps" in found[0]["message"]
    out = tmp_path / "native"
    convert = cli("convert", folder, "--to", "native", "--out", out)
    assert convert.code == 5 and "overlaps" in convert.stderr and not out.exists()
    run = cli("run", folder, "-p", "hi", "--device", "cpu", "--max-tokens", "2")
    assert run.code == 5 and "overlaps" in run.stderr
    published = cli("release", "create", folder, "--out", tmp_path / "pub")
    assert published.code == 5 and "overlaps" in published.stderr and not (tmp_path / "pub").exists()
