"""Issue 17: verify's readers are bounded by what they are for. A file whose size differs from the torrent's or
manifest's is a mismatch before any byte is read (a 1 TiB sparse checkpoint was still being read after 90 s); a
SHA256SUMS is a few KB of UTF-8 (a 200 MB one took 150 s and 2.4 GB); a safetensors of integers is no weights."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
from verify_helpers import make_torrent

from m7b.errors import InvalidInputError
from m7b.verify.digest import FileDigestLane, ReadItem, read_stream
from m7b.verify.sums import MAX_SUMS_BYTES, MAX_SUMS_LINES, parse_sums

TIB = 1 << 40


def test_a_sparse_1_tib_file_is_a_size_mismatch_unread(cli, m7b_home, tiny_release: Path, tmp_path: Path) -> None:
    torrent = tmp_path / "rel.torrent"
    make_torrent(tiny_release, torrent)
    pth = tiny_release / "consolidated.00.pth"
    size = pth.stat().st_size
    with open(pth, "r+b") as fh:
        fh.truncate(TIB)  # sparse: no disk space, but reading it all would take hours
    result = cli("verify", tiny_release, "--torrent", torrent, "--json", timeout=120)
    assert result.code == 5, result.stderr
    assert f"consolidated.00.pth: {TIB:,} bytes, the torrent says {size:,}" in result.stderr
    report = json.loads(result.stdout)
    assert report["bytes_read"] < 10 << 20  # the other files only
    assert "another size than the torrent says and was not read" in result.stdout


def test_a_file_the_manifest_sizes_otherwise_is_not_read(tmp_path: Path) -> None:
    big = tmp_path / "big"
    with open(big, "wb") as fh:
        fh.truncate(TIB)
    ok = tmp_path / "ok"
    ok.write_bytes(b"x" * 10)
    lane = FileDigestLane("sha256")
    found = read_stream([ReadItem("big", big, expected_size=5), ReadItem("ok", ok, expected_size=10)], [lane])
    assert (found["big"].size, found["big"].unread) == (TIB, True)
    assert "big" not in lane.digests and found["ok"].unread is False and "ok" in lane.digests


@pytest.fixture
def converted_copy(converted_tiny: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(converted_tiny["native"], tmp_path / "native"))


def test_a_sha256sums_that_is_not_utf8_is_invalid_input(cli, m7b_home, converted_copy: Path) -> None:
    sums = converted_copy / "SHA256SUMS"
    sums.write_bytes(sums.read_bytes().replace(b"params.json", b"params\xff.json"))
    result = cli("verify", converted_copy)
    assert result.code == 4, result.stderr
    assert "SHA256SUMS: not UTF-8 text (byte" in result.stderr and "convert again" in result.stderr


def test_a_sha256sums_over_the_cap_is_refused_unread(cli, m7b_home, converted_copy: Path) -> None:
    sums = converted_copy / "SHA256SUMS"
    with open(sums, "ab") as fh:
        fh.truncate(200 << 20)  # 200 MB (sparse): took 150 s and 2.4 GB
    result = cli("verify", converted_copy)
    assert result.code == 4
    assert f"over {MAX_SUMS_BYTES:,} bytes; the record convert writes is a few KB" in result.stderr


def test_a_sha256sums_with_more_lines_than_the_cap_is_refused(tmp_path: Path) -> None:
    sums = tmp_path / "SHA256SUMS"
    sums.write_text("\n" * (MAX_SUMS_LINES + 1))
    with pytest.raises(InvalidInputError, match=f"over the {MAX_SUMS_LINES:,}"):
        parse_sums(sums)
    sums.write_text("".join(f"{'0' * 64}  f{i}\n" for i in range(MAX_SUMS_LINES)))
    assert len(parse_sums(sums)) == MAX_SUMS_LINES


@pytest.mark.parametrize("code", ["I16", "U16", "I32", "BOOL"])
def test_run_refuses_a_safetensors_of_integers(cli, m7b_home, converted_copy: Path, code: str) -> None:
    path = converted_copy / "consolidated.safetensors"
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    for key, entry in header.items():
        if key != "__metadata__":
            entry["dtype"] = code
            if code in ("I32",):  # 4-byte elements: keep the offsets consistent with the shape
                entry["shape"] = [max(1, (entry["data_offsets"][1] - entry["data_offsets"][0]) // 4)]
            if code == "BOOL":
                entry["shape"] = [entry["data_offsets"][1] - entry["data_offsets"][0]]
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    result = cli("run", converted_copy, "--prompt", "Hi", "--max-tokens", "2", "--device", "cpu")
    assert result.code == 4, result.stderr
    assert "elements; weights are bfloat16, float16, float32, float64" in result.stderr
    assert "internal error" not in result.stderr
