"""`m7b verify` as a user runs it: by name from the store, a human table or --json, exit codes, the saved report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from verify_helpers import install_release

from m7b.store import Store


@pytest.mark.slow
def test_verify_by_name_ok_saves_report_and_marks_verified(cli, m7b_home: Path, tiny_release_src: Path) -> None:
    install_release(m7b_home, tiny_release_src, "tiny-test")
    human = cli("verify", "tiny-test")
    assert human.code == 0, human.stderr
    assert "verdict: ok" in human.stdout and "bound to the magnet: yes" in human.stdout
    result = cli("verify", "tiny-test", "--json")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["verdict"] == "ok" and doc["bound_to_magnet"] and doc["bound_to_publisher"]
    assert doc["torrent"]["v1_pieces_failed"] == 0 and doc["torrent"]["v1_pieces_checked"] > 100
    saved = json.loads(Path(doc["report_path"]).read_text())
    assert saved["verdict"] == "ok" and {f["path"] for f in saved["files"]} >= {"consolidated.00.pth"}
    assert Store(m7b_home).is_verified("tiny-test")


@pytest.mark.slow
def test_flipped_byte_mid_checkpoint_is_named_by_piece(cli, m7b_home: Path, tiny_release_src: Path) -> None:
    root = install_release(m7b_home, tiny_release_src, "tiny-test")
    path = root / "consolidated.00.pth"
    middle = path.stat().st_size // 2
    with open(path, "r+b") as fh:
        fh.seek(middle)
        b = fh.read(1)
        fh.seek(middle)
        fh.write(bytes([b[0] ^ 1]))
    result = cli("verify", "tiny-test", "--json")
    assert result.code == 5
    doc = json.loads(result.stdout)
    pieces = [f for f in doc["findings"] if f["check"] == "pieces" and f["status"] == "mismatch"]
    assert len(pieces) == 1 and pieces[0]["path"] == "consolidated.00.pth"
    first, last = pieces[0]["detail"]["pieces"][0]
    assert first == last and pieces[0]["detail"]["bytes"][0] <= middle <= pieces[0]["detail"]["bytes"][1]
    assert "consolidated.00.pth" in result.stderr and f"piece {first}" in result.stderr
    assert not Store(m7b_home).is_verified("tiny-test")


@pytest.mark.slow
def test_missing_file_exit_3_names_it(cli, m7b_home: Path, tiny_release_src: Path) -> None:
    root = install_release(m7b_home, tiny_release_src, "tiny-test")
    (root / "tokenizer.model").unlink()
    result = cli("verify", "tiny-test")
    assert result.code == 3
    assert "tokenizer.model" in result.stderr and "missing" in result.stderr


@pytest.mark.slow
def test_without_torrent_metadata_nothing_binds_to_the_magnet(cli, m7b_home: Path, tiny_release_src: Path) -> None:
    install_release(m7b_home, tiny_release_src, "tiny-test")
    for t in (m7b_home / "torrents").iterdir():
        t.unlink()
    result = cli("verify", "tiny-test", "--json")
    assert result.code == 3
    assert "--torrent" in result.stderr
    assert json.loads(result.stdout)["bound_to_magnet"] is False


def test_unknown_release_exit_3(cli, m7b_home: Path) -> None:
    result = cli("verify", "no-such-release")
    assert result.code == 3 and "unknown release" in result.stderr


@pytest.mark.slow
def test_folder_with_manifest_and_torrent_files(cli, m7b_home: Path, tiny_release: Path, tmp_path: Path) -> None:
    from verify_helpers import make_manifest, make_torrent

    from m7b.manifests.writer import manifest_to_toml

    torrent = tmp_path / "r.torrent"
    ih = make_torrent(tiny_release, torrent, hybrid=True)
    manifest = tmp_path / "m.toml"
    manifest.write_text(manifest_to_toml(make_manifest(tiny_release, "outside", ih)))
    result = cli("verify", tiny_release, "--manifest", manifest, "--torrent", torrent, "--json")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["bound_to_magnet"] and doc["torrent"]["v2_pieces_checked"] > 0
    assert doc["report_path"] is None  # a folder outside the store leaves the store alone
    assert not (m7b_home / "reports").exists()


@pytest.mark.slow
def test_v2_only_torrent_binds_and_names_a_flipped_byte_by_its_v2_piece(
    cli, m7b_home: Path, tiny_release_src: Path
) -> None:
    """A BitTorrent v2-only release (btmh magnet, SHA-256 merkle trees per file, no SHA-1 pieces) is proven through
    its per-file piece layers."""
    root = install_release(m7b_home, tiny_release_src, "tiny-v2", v2_only=True)
    result = cli("verify", "tiny-v2", "--json")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["bound_to_magnet"] and doc["torrent"]["v2_pieces_checked"] > 100
    assert doc["torrent"].get("v1_pieces_checked", 0) == 0
    path = root / "tokenizer.model"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    result = cli("verify", "tiny-v2", "--json")
    assert result.code == 5
    failed = [f for f in json.loads(result.stdout)["findings"] if f["check"] == "pieces" and f["status"] == "mismatch"]
    assert [f["path"] for f in failed] == ["tokenizer.model"]
    first, last = failed[0]["detail"]["pieces"][0]
    assert first == last and failed[0]["detail"]["bytes"][0] <= len(data) // 2 <= failed[0]["detail"]["bytes"][1]
