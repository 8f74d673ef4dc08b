"""BEP 19 web seeds: a release's HTTP mirrors are used beside peers, and can serve it alone."""

from __future__ import annotations

import json
import shutil

from swarm import range_http_server, tree_digests
from test_seed import LOOPBACK


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
