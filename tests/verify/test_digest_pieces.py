"""One read pass gives every digest; torrent pieces (v1 across file boundaries, v2 per file) name what fails."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from verify_helpers import PIECE, make_manifest, make_torrent

from m7b.torrent import load_torrent
from m7b.verify.check import verify_release
from m7b.verify.digest import FileDigestLane, ReadItem, read_stream
from m7b.verify.findings import Status
from m7b.verify.pieces import V1PieceLane, read_items


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three files whose sizes are not multiples of the piece or block size; one of 3 MB."""
    root = tmp_path_factory.mktemp("odd") / "odd-release"
    root.mkdir()
    for name, size in (("a.bin", 100_003), ("big.bin", 3_000_017), ("c.bin", 7)):
        (root / name).write_bytes(os.urandom(size))
    return root


def test_one_pass_digests_equal_hashlib_whatever_the_block_size(odd_files: Path) -> None:
    names = sorted(p.name for p in odd_files.iterdir())
    for block in (16 << 10, 1 << 20):
        sha, md5 = FileDigestLane("sha256"), FileDigestLane("md5", {"big.bin"})
        found = read_stream(
            [ReadItem(n, odd_files / n) for n in names] + [ReadItem("gone", odd_files / "gone")],
            [sha, md5],
            block_size=block,
        )
        for n in names:
            data = (odd_files / n).read_bytes()
            assert sha.digests[n] == hashlib.sha256(data).hexdigest()
            assert found[n].size == len(data)
        assert md5.digests == {"big.bin": hashlib.md5((odd_files / "big.bin").read_bytes()).hexdigest()}
        assert found["gone"].size is None and found["gone"].error == "missing"


@pytest.mark.parametrize("hybrid", [False, True], ids=["v1", "hybrid-v1-v2"])
def test_pieces_spanning_files_pass_then_a_flipped_byte_is_named_by_piece(
    odd_files: Path, tmp_path: Path, hybrid: bool
) -> None:
    root = Path(shutil.copytree(odd_files, tmp_path / odd_files.name))
    files = ("a.bin", "big.bin", "c.bin")
    torrent = tmp_path / "r.torrent"
    make_torrent(root, torrent, files=files, hybrid=hybrid)
    _, plan = load_torrent(torrent)
    assert (plan.info_hash_v2 is not None) == hybrid
    lane = V1PieceLane(plan.piece_length, plan.v1_hashes)
    read_stream(read_items(plan, root), [lane], block_size=1 << 20)
    assert lane.failed == [] and lane.checked == len(plan.v1_hashes)

    offset = 1_500_000  # the middle of big.bin
    with open(root / "big.bin", "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x40]))
    report = verify_release(root, None, torrent)
    assert report.verdict == Status.MISMATCH
    failing = [f for f in report.findings if f.check == "pieces" and f.status == Status.MISMATCH]
    assert {f.path for f in failing} == {"big.bin"}
    v1 = next(f for f in failing if f.detail["version"] == 1)
    piece = (100_003 + offset) // PIECE  # v1 pieces count from the start of the torrent (a.bin first)
    assert v1.detail["pieces"] == [[piece, piece]]
    assert f"piece {piece} " in v1.message and "big.bin" in v1.message
    if hybrid:  # v2 pieces count from the start of each file
        v2 = next(f for f in failing if f.detail["version"] == 2)
        assert v2.detail["pieces"] == [[offset // PIECE, offset // PIECE]]


def test_missing_file_fails_its_pieces_and_says_missing(odd_files: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(odd_files, tmp_path / odd_files.name))
    torrent = tmp_path / "r.torrent"
    make_torrent(root, torrent, files=("a.bin", "big.bin", "c.bin"))
    (root / "big.bin").unlink()
    report = verify_release(root, None, torrent)
    assert report.verdict == Status.MISSING and report.exit_code == 3
    assert any(f.status == Status.MISSING and f.path == "big.bin" for f in report.findings)
    assert not any(f.status == Status.MISMATCH for f in report.findings)  # absent is not the same as wrong
    assert report.to_json()["torrent"]["v1_pieces_unchecked"] > 0


@pytest.mark.slow
def test_torrent_of_another_release_is_a_mismatch(tiny_release: Path, tmp_path: Path) -> None:
    torrent = tmp_path / "r.torrent"
    make_torrent(tiny_release, torrent)
    manifest = make_manifest(tiny_release, "tiny", "0" * 40)
    report = verify_release(tiny_release, manifest, torrent)
    assert report.verdict == Status.MISMATCH and not report.bound_to_magnet
    assert any(f.check == "magnet" and "0" * 40 in f.message for f in report.findings)


@pytest.mark.slow
def test_bound_release_passes_every_check(tiny_release: Path, tmp_path: Path) -> None:
    torrent = tmp_path / "r.torrent"
    ih = make_torrent(tiny_release, torrent)
    report = verify_release(tiny_release, make_manifest(tiny_release, "tiny", ih), torrent)
    assert report.verdict == Status.OK, [f.message for f in report.failures()]
    assert report.bound_to_magnet and report.bound_to_publisher
    assert {f["path"] for f in report.to_json()["files"]} == {
        "RELEASE",
        "consolidated.00.pth",
        "params.json",
        "tokenizer.model",
    }


@pytest.mark.slow
def test_manifest_digest_and_size_mismatches_and_extra_files(tiny_release: Path, tmp_path: Path) -> None:
    torrent = tmp_path / "r.torrent"
    ih = make_torrent(tiny_release, torrent)
    manifest = make_manifest(tiny_release, "tiny", ih)
    (tiny_release / "notes.txt").write_text("not in the torrent\n")
    (tiny_release / "params.json").write_text((tiny_release / "params.json").read_text() + " ")
    report = verify_release(tiny_release, manifest, torrent)
    assert report.verdict == Status.MISMATCH and not report.bound_to_publisher
    by_path = {(f.check, f.path): f for f in report.findings}
    assert by_path[("manifest", "params.json")].status == Status.MISMATCH
    assert by_path[("manifest", "notes.txt")].status == Status.NOTE
    assert "extra file" in by_path[("manifest", "notes.txt")].message


@pytest.mark.slow
def test_a_manifest_with_only_a_magnet_binds_by_the_magnets_hash(tiny_release: Path, tmp_path: Path) -> None:
    import base64
    import dataclasses

    from m7b.magnet import parse_magnet

    torrent = tmp_path / "r.torrent"
    ih = make_torrent(tiny_release, torrent)
    b32 = base64.b32encode(bytes.fromhex(ih)).decode()
    assert parse_magnet(f"magnet:?xt=urn:btih:{b32}&dn=x").hashes == (ih,)
    manifest = make_manifest(tiny_release, "tiny", None)
    manifest = dataclasses.replace(
        manifest, torrent=dataclasses.replace(manifest.torrent, magnet=f"magnet:?xt=urn:btih:{ih}&dn=tiny")
    )
    report = verify_release(tiny_release, manifest, torrent)
    assert report.verdict == Status.OK and report.bound_to_magnet


def test_progress_counts_bytes_up_to_the_total_and_renders_a_rate(odd_files: Path) -> None:
    """The one read pass reports bytes hashed (never backwards, ending at the files' total), and the CLI's bar
    renders them as bytes with a byte rate."""
    from rich.progress import Progress

    from m7b.cli.render import AmountColumn
    from m7b.progress import ProgressEvent

    names = sorted(p.name for p in odd_files.iterdir())
    total = sum((odd_files / n).stat().st_size for n in names)
    events: list[ProgressEvent] = []
    read_stream(
        [ReadItem(n, odd_files / n) for n in names],
        [FileDigestLane("sha256")],
        block_size=16 << 10,
        progress=events.append,
    )
    assert events and {e.phase for e in events} == {"hashing"} and {e.total for e in events} == {total}
    assert [e.done for e in events] == sorted(e.done for e in events) and events[-1].done == total
    assert {e.unit for e in events} == {"B"}
    bars = Progress()
    task = bars.add_task("hashing", total=total, unit="B")
    bars.update(task, completed=total // 2)
    bars.update(task, completed=total)
    shown = str(AmountColumn().render(bars.tasks[0]))
    assert "/" in shown and "/s" in shown, shown
    assert "iB" in shown and "MB" not in shown and "kB" not in shown, shown  # binary units, as everywhere
