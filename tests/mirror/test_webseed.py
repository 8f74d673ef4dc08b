"""BEP 19 web seeds: a release's HTTP mirrors are used beside peers, and can serve it alone."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from swarm import nginx_binary, nginx_server, no_range_http_server, range_http_server, tree_digests
from test_seed import LOOPBACK


@pytest.mark.slow
def test_fetch_finishes_from_a_web_seed_alone(cli, m7b_home, publish, tmp_path) -> None:
    mirror_root = tmp_path / "www"
    with range_http_server(mirror_root) as base:
        pub = publish(web_seeds=[base])
        # BEP 19 multi-file layout: <url><torrent name>/<path>
        shutil.copytree(pub.folder, mirror_root / pub.meta.name)
        result = cli("fetch", pub.torrent, *LOOPBACK, "--json", "--timeout", "60")
    assert result.code == 0, result.stderr
    done = json.loads(result.stdout.splitlines()[-1])
    assert done["downloaded_bytes"] == pub.meta.total_size  # no tracker, no DHT, no peer: all from the web seed
    assert tree_digests(m7b_home / "releases" / done["name"]) == tree_digests(pub.folder)


@pytest.mark.slow
def test_manifest_web_seeds_are_used_for_a_magnet(cli, m7b_home, publish, tmp_path) -> None:
    mirror_root = tmp_path / "www"
    pub = publish(name="webseeded")
    with range_http_server(mirror_root) as base:
        shutil.copytree(pub.folder, mirror_root / pub.meta.name)
        (m7b_home / "manifests").mkdir(parents=True)
        text = pub.manifest.read_text()
        text = text.replace("files_complete = true", f'web_seeds = ["{base}"]\nfiles_complete = true')
        (m7b_home / "manifests" / "webseeded.toml").write_text(text)
        # the store already holds the torrent (as after a first metadata fetch): no peer is needed at all
        (m7b_home / "torrents").mkdir()
        shutil.copy(pub.torrent, m7b_home / "torrents" / f"{pub.meta.info_hash}.torrent")
        result = cli("fetch", "webseeded", *LOOPBACK, "--json", "--timeout", "60")
    assert result.code == 0, result.stderr
    assert tree_digests(m7b_home / "releases" / "webseeded") == tree_digests(pub.folder)


needs_nginx = pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed (scripts/setup installs it)")


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@needs_nginx
def test_fetch_from_an_nginx_web_seed_reports_it_working(cli, m7b_home, publish, tmp_path) -> None:
    www = tmp_path / "www"
    with nginx_server(www, tmp_path / "nginx") as base:
        pub = publish(web_seeds=[base])
        shutil.copytree(pub.folder, www / pub.meta.name)
        result = cli("fetch", pub.torrent, *LOOPBACK, "--json", "--timeout", "10")
    assert result.code == 0, result.stderr
    events = _json_lines(result.stdout)
    assert tree_digests(m7b_home / "releases" / events[-1]["name"]) == tree_digests(pub.folder)
    progress = [e for e in events if e["event"] == "progress" and e["phase"] == "downloading"]
    assert progress and progress[0]["web_seeds"][0]["url"] == base
    assert {"trackers", "seeds", "peers", "elapsed"} <= progress[0].keys()


@needs_nginx
@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("missing/", "answered HTTP 404"),  # a 4xx is final: the fetch stops at once
        pytest.param("broken/", "answered HTTP 500", marks=pytest.mark.slow),  # a 5xx may pass: waits the timeout
    ],
)
def test_a_web_seed_answering_an_http_error_is_named_with_its_status(
    cli, m7b_home, publish, tmp_path, where: str, expected: str
) -> None:
    www = tmp_path / "www"
    (www / "broken").mkdir(parents=True)
    with nginx_server(www, tmp_path / "nginx") as base:
        pub = publish(web_seeds=[base + where])
        result = cli("fetch", pub.torrent, *LOOPBACK, "--json", "--timeout", "2")
    assert result.code == 7
    error = _json_lines(result.stdout)[-1]
    assert f"web seed {base}{where} {expected}" in error["error"], error
    assert not (m7b_home / "releases" / "tiny-test").exists()
    seen = [w for e in _json_lines(result.stdout) if e["event"] == "progress" for w in e["web_seeds"]]
    assert any(w["status"] == "error" and w["http_status"] == int(expected[-3:]) for w in seen), seen


@pytest.mark.slow
@needs_nginx
def test_a_web_seed_serving_wrong_bytes_is_named_and_banned(cli, m7b_home, publish, tmp_path) -> None:
    www = tmp_path / "www"
    with nginx_server(www, tmp_path / "nginx") as base:
        pub = publish(web_seeds=[base])
        served = Path(shutil.copytree(pub.folder, www / pub.meta.name))
        pth = served / "consolidated.00.pth"
        pth.write_bytes(bytes(b ^ 0xFF for b in pth.read_bytes()))  # same size, every byte wrong
        result = cli("fetch", pub.torrent, *LOOPBACK, "--timeout", "5")
    assert result.code == 7
    assert f"web seed {base} sent data that failed the piece hashes (banned)" in result.stderr
    assert not (m7b_home / "releases" / "tiny-test").exists()


@pytest.mark.slow
def test_a_web_seed_without_range_support_fails_at_once_and_says_so(
    cli, m7b_home, publish, tiny_release: Path, tmp_path
) -> None:
    # a file larger than one web-seed request (libtorrent asks for at most 16 MiB at a time), so a range request
    # that does not start at byte 0 reaches the server
    (tiny_release / "extra.bin").write_bytes(os.urandom(17 << 20))
    www = tmp_path / "www"
    with no_range_http_server(www) as base:
        pub = publish(web_seeds=[base])
        shutil.copytree(pub.folder, www / pub.meta.name)
        result = cli("fetch", pub.torrent, *LOOPBACK, "--timeout", "60")
    assert result.code == 7
    assert f"web seed {base} answers without Range support (HTTP 200 for a range request)" in result.stderr
    assert "honours Range" in result.stderr and "no data arrived for 60 s" not in result.stderr
    assert not (m7b_home / "releases" / "tiny-test").exists()


def test_a_magnet_with_only_web_seeds_says_metadata_needs_a_peer_or_a_torrent(cli, m7b_home, publish) -> None:
    pub = publish(web_seeds=["http://127.0.0.1:9/"])
    result = cli("fetch", pub.magnet, *LOOPBACK, "--timeout", "60")
    assert result.code == 7
    assert "web seeds (http://127.0.0.1:9/) serve file data, not the metadata" in result.stderr
    assert ".torrent" in result.stderr and "--peer" in result.stderr
    releases = m7b_home / "releases"
    assert not releases.exists() or list(releases.iterdir()) == []
