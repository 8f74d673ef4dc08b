"""Interop with independent BitTorrent clients, aria2c and rtorrent, in both directions."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from rtorrent import rtorrent_binary, running_rtorrent
from swarm import free_port, local_opentracker, tree_digests, wait_for
from test_seed import LOOPBACK, running_seed, stop

ARIA2 = [
    "--enable-dht=false",
    "--enable-dht6=false",
    "--bt-enable-lpd=false",
    "--enable-peer-exchange=false",
    "--console-log-level=warn",
    "--summary-interval=0",
    "--check-integrity=true",
    "--file-allocation=none",
]


def aria2c() -> str:
    binary = shutil.which("aria2c")
    assert binary, "aria2c is not installed (apt-get install aria2; scripts/setup does it)"
    return binary


@pytest.mark.slow
def test_aria2c_downloads_from_m7b_seed_through_the_tracker(m7b_home, publish, tmp_path) -> None:
    port = free_port()
    pub = publish(trackers=[f"http://127.0.0.1:{port}/announce"])
    with (
        local_opentracker(tmp_path / "tracker", [pub.meta.info_hash], port=port),
        running_seed(pub.folder) as (proc, status),
    ):
        assert status["releases"][0]["state"] == "seeding"
        out = tmp_path / "aria2"
        result = subprocess.run(
            [aria2c(), *ARIA2, "--seed-time=0", "--bt-stop-timeout=60", f"--dir={out}", str(pub.torrent)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        events = stop(proc)
    assert tree_digests(out / pub.meta.name) == tree_digests(pub.folder)
    assert [e for e in events if e["event"] == "status"][-1]["releases"][0]["uploaded"] >= pub.meta.total_size


@pytest.mark.slow
def test_m7b_fetches_from_an_aria2c_seeder(cli, m7b_home, publish, tmp_path) -> None:
    pub = publish()
    port = free_port()
    # aria2c seeds the folder it finds under --dir/<torrent name> after checking every piece
    seeder = subprocess.Popen(
        [aria2c(), *ARIA2, "--seed-ratio=0.0", f"--listen-port={port}", f"--dir={pub.folder.parent}", str(pub.torrent)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import socket

        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        assert wait_for(listening, 30), "aria2c did not start seeding"
        result = cli("fetch", pub.magnet, "--peer", f"127.0.0.1:{port}", *LOOPBACK, "--json", "--timeout", "60")
    finally:
        seeder.terminate()
        seeder.wait(10)
    assert result.code == 0, result.stderr
    done = json.loads(result.stdout.splitlines()[-1])
    assert done["downloaded_bytes"] == pub.meta.total_size
    assert tree_digests(m7b_home / "releases" / done["name"]) == tree_digests(pub.folder)


needs_rtorrent = pytest.mark.skipif(rtorrent_binary() is None, reason="rtorrent is not installed (scripts/setup)")


@pytest.mark.slow
@needs_rtorrent
def test_rtorrent_downloads_from_m7b_seed_through_the_tracker(m7b_home, publish, tmp_path) -> None:
    port = free_port()
    pub = publish(trackers=[f"http://127.0.0.1:{port}/announce"])  # a v1 torrent: rtorrent adds no .pad/ folder
    out = tmp_path / "rtorrent-data"
    out.mkdir()
    with (
        local_opentracker(tmp_path / "tracker", [pub.meta.info_hash], port=port),
        running_seed(pub.folder) as (proc, status),
        running_rtorrent(pub.torrent, out, tmp_path / "rtorrent") as rt,
    ):
        assert status["releases"][0]["state"] == "seeding"
        assert wait_for(rt.finished.exists, 12), f"rtorrent did not finish; its log:\n{rt.log_text()}"
        events = stop(proc)
    assert tree_digests(out / pub.folder.name) == tree_digests(pub.folder)
    assert [e for e in events if e["event"] == "status"][-1]["releases"][0]["uploaded"] >= pub.meta.total_size


@pytest.mark.slow
@needs_rtorrent
def test_m7b_fetches_from_an_rtorrent_seeder_through_the_tracker(cli, m7b_home, publish, tmp_path) -> None:
    port = free_port()
    pub = publish(trackers=[f"http://127.0.0.1:{port}/announce"])
    # rtorrent seeds the folder it finds under its directory/<torrent name> once every piece checks out
    with (
        local_opentracker(tmp_path / "tracker", [pub.meta.info_hash], port=port),
        running_rtorrent(pub.torrent, pub.folder.parent, tmp_path / "rtorrent") as rt,
    ):
        assert wait_for(rt.hashed.exists, 10), f"rtorrent did not check the folder; its log:\n{rt.log_text()}"
        assert rt.hashed.read_text().strip() == "1", "rtorrent found the publisher's folder incomplete"
        assert wait_for(rt.announced, 10), f"rtorrent did not announce; its log:\n{rt.log_text()}"
        result = cli("fetch", pub.magnet, *LOOPBACK, "--json", "--timeout", "12")
    assert result.code == 0, result.stderr
    done = json.loads(result.stdout.splitlines()[-1])
    assert done["downloaded_bytes"] == pub.meta.total_size
    assert tree_digests(m7b_home / "releases" / done["name"]) == tree_digests(pub.folder)
