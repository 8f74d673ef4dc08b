from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import libtorrent as lt
import pytest

from m7b.manifests.loader import load_manifest
from m7b.torrent import load_torrent

TRACKER = "http://127.0.0.1:6969/announce"


def create(cli, folder: Path, out: Path, *extra: str):
    return cli("release", "create", folder, "--tracker", TRACKER, "--out", out, "--json", *extra)


def v1_pieces_match(folder: Path, torrent: Path) -> bool:
    ti, meta = load_torrent(torrent)
    stream = b"".join((folder / f.path).read_bytes() for f in meta.data_files)
    n = meta.piece_length
    return all(
        hashlib.sha1(stream[i * n : (i + 1) * n]).digest() == ti.hash_for_piece(i) for i in range(meta.num_pieces)
    )


@pytest.mark.slow
def test_create_is_deterministic_and_the_manifest_hashes_every_file(cli, tiny_release: Path, tmp_path) -> None:
    first = create(cli, tiny_release, tmp_path / "a")
    assert first.code == 0, first.stderr
    doc = json.loads(first.stdout)
    os.utime(tiny_release / "RELEASE", (1, 1))  # mtimes and creation time must not matter
    second = create(cli, tiny_release, tmp_path / "b")
    assert json.loads(second.stdout)["info_hash_v1"] == doc["info_hash_v1"]
    name = tiny_release.name
    assert (tmp_path / "a" / f"{name}.torrent").read_bytes() == (tmp_path / "b" / f"{name}.torrent").read_bytes()
    assert doc["magnet"].startswith(f"magnet:?xt=urn:btih:{doc['info_hash_v1']}&dn={name}&tr=")
    assert doc["info_hash_v2"] is None  # v1 by default, like the original

    manifest = load_manifest(tmp_path / "a" / f"{name}.toml")
    assert manifest.torrent.info_hash_v1 == doc["info_hash_v1"]
    for f in manifest.files:
        data = (tiny_release / f.path).read_bytes()
        assert (f.size, f.sha256, f.md5) == (len(data), hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest())
    assert manifest.architecture.sliding_window == 16
    assert v1_pieces_match(tiny_release, tmp_path / "a" / f"{name}.torrent")


def test_hybrid_web_seeds_and_piece_size(cli, tiny_release: Path, tmp_path) -> None:
    result = create(
        cli, tiny_release, tmp_path, "--hybrid", "--piece-size", "64K", "--web-seed", "http://127.0.0.1:8000/"
    )
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert len(doc["info_hash_v2"]) == 64 and doc["piece_length"] == 65536
    ti, meta = load_torrent(Path(doc["torrent"]))
    assert meta.web_seeds == ("http://127.0.0.1:8000/",) and meta.trackers == (TRACKER,)
    assert ti.info_hashes().has_v2()
    assert f"urn:btmh:1220{doc['info_hash_v2']}" in doc["magnet"]


@pytest.mark.slow
def test_libtorrent_sees_the_created_torrent_complete(cli, tiny_release: Path, tmp_path) -> None:
    doc = json.loads(create(cli, tiny_release, tmp_path / "t").stdout)
    ses = lt.session(
        {
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "listen_interfaces": "127.0.0.1:0",
        }
    )
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(doc["torrent"])
    params.save_path = str(tiny_release.parent)
    handle = ses.add_torrent(params)
    import time

    for _ in range(200):
        status = handle.status()
        if status.state == lt.torrent_status.seeding:
            break
        time.sleep(0.05)
    assert handle.status().state == lt.torrent_status.seeding
    assert handle.status().num_pieces == doc["pieces"]


@pytest.mark.parametrize(
    ("setup", "code", "message"),
    [
        (lambda d: d.rename(d.parent / "gone"), 3, "not found"),
        (lambda d: [p.unlink() for p in d.iterdir()], 4, "is empty"),
        (lambda d: (d / "link").symlink_to("/etc/passwd"), 4, "is not a regular file"),
        (lambda d: (d / "params.json").write_text("{oops"), 4, "is not valid JSON"),
    ],
)
@pytest.mark.slow
def test_bad_release_folders_are_refused_and_nothing_is_written(
    cli, tiny_release, tmp_path, setup, code, message
) -> None:
    setup(tiny_release)
    result = create(cli, tiny_release, tmp_path / "out")
    assert result.code == code and message in result.stderr
    assert not (tmp_path / "out").exists()


def test_bad_piece_size(cli, tiny_release, tmp_path) -> None:
    result = create(cli, tiny_release, tmp_path / "out", "--piece-size", "3000")
    assert result.code == 4 and "power of two" in result.stderr


@pytest.mark.slow
def test_existing_output_with_other_content_is_kept(cli, tiny_release, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / f"{tiny_release.name}.torrent").write_bytes(b"someone else's torrent")
    result = create(cli, tiny_release, out)
    assert result.code == 8 and "--force" in result.stderr
    assert (out / f"{tiny_release.name}.torrent").read_bytes() == b"someone else's torrent"
    assert create(cli, tiny_release, out, "--force").code == 0


@pytest.mark.slow
def test_a_hybrid_torrent_comes_with_the_clients_that_mishandle_it(cli, m7b_home, tiny_release, tmp_path) -> None:
    out = tmp_path / "out"
    made = cli("release", "create", tiny_release, "--hybrid", "--out", out, "--no-inspect", "--json")
    assert made.code == 0, made.stderr
    warnings = json.loads(made.stdout)["warnings"]
    assert any("aria2c" in w for w in warnings) and any("rtorrent" in w and ".pad/" in w for w in warnings)
    plain = cli("release", "create", tiny_release, "--out", out, "--no-inspect", "--force")
    assert plain.code == 0, plain.stderr
    assert "aria2c" not in plain.stderr
    again = cli("release", "create", tiny_release, "--hybrid", "--out", out, "--no-inspect", "--force")
    assert "note:" in again.stderr and "aria2c" in again.stderr
