"""Trackers as the real swarm has them: UDP (opentracker), in both directions with aria2c, and a dead tracker
listed before a live one."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest
from swarm import free_port, local_opentracker, plain_seeder, silent_tracker, tree_digests, wait_for
from test_interop import ARIA2, aria2c
from test_seed import LOOPBACK, running_seed, stop

pytestmark = pytest.mark.slow  # real trackers and clients in processes of their own (2-8 s each here)


def test_m7b_fetches_from_an_m7b_seed_through_a_udp_tracker(cli, m7b_home, publish, tmp_path) -> None:
    port = free_port()
    pub = publish(trackers=[f"udp://127.0.0.1:{port}/announce"])
    with (
        local_opentracker(tmp_path / "tracker", [pub.meta.info_hash], port=port),
        running_seed(pub.folder) as (proc, status),
    ):
        assert status["releases"][0]["state"] == "seeding"
        result = cli(
            "fetch", pub.magnet, *LOOPBACK, "--json", "--timeout", "15", env={"M7B_HOME": str(tmp_path / "leecher")}
        )
        events = stop(proc)
    assert result.code == 0, result.stderr
    done = json.loads(result.stdout.splitlines()[-1])
    assert tree_digests(tmp_path / "leecher" / "releases" / done["name"]) == tree_digests(pub.folder)
    trackers = [e for e in events if e["event"] == "status"][-1]["releases"][0]["trackers"]
    assert [(t["url"], t["status"]) for t in trackers] == [(f"udp://127.0.0.1:{port}/announce", "working")]


def test_aria2c_downloads_from_an_m7b_seed_through_a_udp_tracker(m7b_home, publish, tmp_path) -> None:
    port = free_port()
    pub = publish(trackers=[f"udp://127.0.0.1:{port}/announce"])
    with (
        local_opentracker(tmp_path / "tracker", [pub.meta.info_hash], port=port),
        running_seed(pub.folder) as (proc, status),
    ):
        assert status["releases"][0]["state"] == "seeding"
        out = tmp_path / "aria2"
        result = subprocess.run(
            [*aria2_udp(tmp_path / "dht.dat"), "--seed-time=0", "--bt-stop-timeout=30", f"--dir={out}", pub.torrent],
            capture_output=True,
            text=True,
            timeout=60,
        )
        stop(proc)
    assert result.returncode == 0, result.stdout + result.stderr
    assert tree_digests(out / pub.meta.name) == tree_digests(pub.folder)


def test_m7b_fetches_from_an_aria2c_seeder_through_a_udp_tracker(cli, m7b_home, publish, tmp_path) -> None:
    port = free_port()
    pub = publish(trackers=[f"udp://127.0.0.1:{port}/announce"])
    peer_port = free_port()
    with local_opentracker(tmp_path / "tracker", [pub.meta.info_hash], port=port):
        seeder = subprocess.Popen(
            [*aria2_udp(tmp_path / "dht.dat"), "--seed-ratio=0.0", f"--listen-port={peer_port}",
             f"--dir={pub.folder.parent}",
             str(pub.torrent)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            assert wait_for(lambda: _listening(peer_port), 30), "aria2c did not start seeding"
            result = cli("fetch", pub.magnet, *LOOPBACK, "--json", "--timeout", "15")  # no --peer: the tracker's
        finally:
            seeder.terminate()
            seeder.wait(10)
    assert result.code == 0, result.stderr
    done = json.loads(result.stdout.splitlines()[-1])
    assert tree_digests(m7b_home / "releases" / done["name"]) == tree_digests(pub.folder)


def aria2_udp(work: Path) -> list[str]:
    """aria2c with UDP trackers on: aria2 speaks UDP to trackers only through its DHT socket (its DHT knows no node
    here: no entry point, a fresh dht.dat in `work`)."""
    options = [o for o in ARIA2 if not o.startswith("--enable-dht=")]
    return [aria2c(), *options, "--enable-dht=true", f"--dht-listen-port={free_port()}", f"--dht-file-path={work}"]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_a_dead_tracker_listed_first_costs_nothing(cli, m7b_home, publish, tmp_path) -> None:
    # a tracker that accepts and never answers: libtorrent gives up on it only after tracker_receive_timeout
    # (10 s); the fetch must finish through the live tracker well inside --timeout 5
    port = free_port()
    with silent_tracker() as dead:
        live_http = f"http://127.0.0.1:{port}/announce"
        pub = publish(trackers=[dead, live_http])
        with (
            local_opentracker(tmp_path / "tracker", [pub.meta.info_hash], port=port) as tracker,
            plain_seeder(pub.torrent, pub.folder, tracker=tracker),
        ):
            result = cli("fetch", pub.magnet, *LOOPBACK, "--json", "--timeout", "5")
    assert result.code == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert tree_digests(m7b_home / "releases" / events[-1]["name"]) == tree_digests(pub.folder)
    # no --peer: the live tracker brought the seeder, while the dead one never answered
    assert all(t["status"] != "working" for e in events for t in e.get("trackers", []) if t["url"] == dead)
