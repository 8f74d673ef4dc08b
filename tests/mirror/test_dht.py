"""A bare magnet found through the DHT alone: a private DHT of libtorrent nodes on 127.0.0.2-9, m7b joining it
with --dht-bootstrap, as a leecher and as a seed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from swarm import dht_state_nodes, private_dht, tree_digests

from m7b.release import slug
from m7b.store import Store

pytestmark = pytest.mark.slow  # a DHT of 8 nodes and m7b in processes of its own (2-6 s each here)


def bare(info_hash: str) -> str:
    return f"magnet:?xt=urn:btih:{info_hash}"


def test_a_bare_magnet_is_fetched_through_a_private_dht(cli, m7b_home, publish) -> None:
    pub = publish()
    with private_dht() as dht:
        fetch = subprocess.Popen(
            [sys.executable, "-m", "m7b", "fetch", bare(pub.meta.info_hash), "--dht-bootstrap", dht.bootstrap,
             "--listen", "127.0.0.20:0", "--json", "--timeout", "15"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        # the seed joins only after the fetch's lookups found nobody, twice, and it cannot reach the fetch (as if
        # the fetch were behind a NAT): libtorrent alone would look again only after dht_announce_interval (15
        # minutes); m7b looks again within seconds until the DHT answers
        first = dht.wait_for_lookup(pub.meta.info_hash)
        assert first is not None, "the fetch never asked the DHT"
        assert dht.wait_for_lookup(pub.meta.info_hash, after=first + 1.0), "the fetch asked the DHT only once"
        dht.seed(3, pub.torrent, pub.folder, reaches_out=False)
        out, err = fetch.communicate(timeout=60)
    assert fetch.returncode == 0, err
    done = json.loads(out.splitlines()[-1])
    # stored under the torrent's own name, not its info-hash, and known by that name from now on
    assert done["name"] == slug(pub.meta.name) != pub.meta.info_hash
    assert tree_digests(m7b_home / "releases" / done["name"]) == tree_digests(pub.folder)
    assert Store(m7b_home).recorded_releases() == {done["name"]: pub.meta.info_hash}
    assert not any(p.name.startswith(f".{pub.meta.info_hash}") for p in (m7b_home / "releases").iterdir())
    # the DHT's routing table is kept for the next run
    assert dht_state_nodes((m7b_home / "dht" / "state").read_bytes()) > 0


def test_a_bare_magnet_whose_name_is_taken_gets_a_stable_suffix(cli, m7b_home, publish) -> None:
    pub = publish()
    name = slug(pub.meta.name)
    Store(m7b_home).record_release(name, "ab" * 20)  # another torrent already has that name in the store
    with private_dht() as dht:
        dht.seed(5, pub.torrent, pub.folder)
        result = cli(
            "fetch", bare(pub.meta.info_hash), "--dht-bootstrap", dht.bootstrap, "--listen", "127.0.0.20:0",
            "--json", "--timeout", "15",
        )  # fmt: skip
    assert result.code == 0, result.stderr
    suffixed = f"{name}-{pub.meta.info_hash[:8]}"
    assert json.loads(result.stdout.splitlines()[-1])["name"] == suffixed
    assert f"stored as {suffixed}" in result.stderr and "another info-hash" in result.stderr
    assert Store(m7b_home).recorded_releases() == {name: "ab" * 20, suffixed: pub.meta.info_hash}
    again = cli("fetch", bare(pub.meta.info_hash), "--no-dht", "--listen", "127.0.0.20:0", "--json", "--timeout", "5")
    assert again.code == 0, again.stderr  # the same magnet names the same release: rechecked, nothing fetched
    assert json.loads(again.stdout.splitlines()[-1])["name"] == suffixed


def test_an_m7b_seed_is_found_through_the_dht_by_a_bare_magnet(cli, m7b_home, publish, tmp_path: Path) -> None:
    pub = publish()
    with private_dht() as dht:
        seed = subprocess.Popen(
            [sys.executable, "-m", "m7b", "seed", str(pub.folder), "--dht-bootstrap", dht.bootstrap,
             "--listen", "127.0.0.21:0", "--json", "--interval", "0.5"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert seed.stdout is not None
            for line in seed.stdout:
                if json.loads(line)["releases"][0]["state"] == "seeding":
                    break
            # the seed announced itself: a node of the DHT that never heard of it finds it
            assert dht.finds(_sha1(pub.meta.info_hash)), "the m7b seed is not in the DHT"
            leecher = {"M7B_HOME": str(tmp_path / "leecher")}
            result = cli(
                "fetch", bare(pub.meta.info_hash), "--dht-bootstrap", dht.bootstrap, "--listen", "127.0.0.22:0",
                "--json", "--timeout", "15", env=leecher,
            )  # fmt: skip
        finally:
            seed.terminate()
            seed.communicate(timeout=30)
    assert result.code == 0, result.stderr
    done = json.loads(result.stdout.splitlines()[-1])
    assert tree_digests(Path(done["path"])) == tree_digests(pub.folder)


def _sha1(info_hash: str):
    import libtorrent as lt

    return lt.sha1_hash(bytes.fromhex(info_hash))


def test_dht_bootstrap_refuses_a_malformed_node_and_a_contradiction(cli, m7b_home) -> None:
    bad = cli("fetch", bare("ab" * 20), "--dht-bootstrap", "router.bittorrent.com", "--timeout", "1")
    assert bad.code == 4 and "DHT bootstrap node 'router.bittorrent.com'" in bad.stderr
    both = cli("fetch", bare("ab" * 20), "--no-dht", "--dht-bootstrap", "127.0.0.2:6881", "--timeout", "1")
    assert both.code == 4 and "--no-dht" in both.stderr
    assert not (m7b_home / "releases").exists()
