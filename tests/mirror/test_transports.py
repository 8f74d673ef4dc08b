"""Transports and switches: a uTP-only peer, IPv6 loopback, a busy --listen port, rate limits on a LAN peer."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
from swarm import has_ipv6_loopback, plain_seeder, tree_digests

pytestmark = pytest.mark.slow  # m7b in processes of its own against real libtorrent peers (1-5 s each here)

# the default profile (uTP, LSD, port mapping as a user has them) without the DHT, on loopback
NO_DHT = ("--no-dht", "--listen", "127.0.0.1:0")


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_a_utp_only_peer_is_fetched_from_with_no_dht(cli, m7b_home, publish) -> None:
    pub = publish()
    with plain_seeder(pub.torrent, pub.folder, utp_only=True) as peer:
        result = cli("fetch", pub.magnet, "--peer", peer, *NO_DHT, "--json", "--timeout", "15")
    assert result.code == 0, result.stderr  # --no-dht turns off the DHT only: uTP stays on
    done = events(result.stdout)[-1]
    assert tree_digests(m7b_home / "releases" / done["name"]) == tree_digests(pub.folder)


def test_the_loopback_profile_says_why_a_utp_only_peer_cannot_be_reached(cli, m7b_home, publish) -> None:
    pub = publish()
    with plain_seeder(pub.torrent, pub.folder, utp_only=True) as peer:
        result = cli("fetch", pub.magnet, "--peer", peer, "--loopback", "--listen", "127.0.0.1:0", "--timeout", "2")
    assert result.code == 7, result.stderr
    assert "uTP is off in the loopback profile" in result.stderr
    assert not (m7b_home / "releases").exists() or list((m7b_home / "releases").iterdir()) == []


@pytest.mark.skipif(not has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_seed_and_fetch_over_ipv6_loopback(cli, m7b_home, publish, tmp_path) -> None:
    pub = publish()
    seed = subprocess.Popen(
        [sys.executable, "-m", "m7b", "seed", str(pub.folder), "--loopback", "--listen", "[::1]:0", "--json",
         "--interval", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert seed.stdout is not None
        for line in seed.stdout:
            status = json.loads(line)
            if status["releases"][0]["state"] != "checking":
                break
        assert status["releases"][0]["state"] == "seeding"
        peer = f"[::1]:{status['listen_port']}"
        leecher = {"M7B_HOME": str(tmp_path / "leecher")}
        result = cli(
            "fetch", pub.magnet, "--peer", peer, "--loopback", "--listen", "[::1]:0", "--json", "--timeout", "15",
            env=leecher,
        )  # fmt: skip
    finally:
        seed.terminate()
        seed.communicate(timeout=30)
    assert result.code == 0, result.stderr
    assert tree_digests(tmp_path / "leecher" / "releases" / events(result.stdout)[-1]["name"]) == tree_digests(
        pub.folder
    )


@pytest.mark.parametrize("command", ["fetch", "seed"])
def test_listen_on_a_busy_port_is_an_error_naming_it(cli, m7b_home, publish, command: str) -> None:
    pub = publish()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        target = (pub.magnet, "--timeout", "5") if command == "fetch" else (pub.folder,)
        result = cli(command, *target, "--loopback", "--listen", f"127.0.0.1:{port}")
    assert result.code == 7, result.stderr
    assert f"could not listen on 127.0.0.1:{port}" in result.stderr and "--listen" in result.stderr
    assert not (m7b_home / "releases").exists() or list((m7b_home / "releases").iterdir()) == []


def test_download_limit_holds_for_a_lan_peer(cli, m7b_home, publish) -> None:
    pub = publish()
    with plain_seeder(pub.torrent, pub.folder) as peer:  # 127.0.0.1: a "local" peer, exempt in libtorrent
        result = cli("fetch", pub.magnet, "--peer", peer, *NO_DHT, "--download-limit", "4M", "--json")
    assert result.code == 0, result.stderr
    rates = [e["rate"] for e in events(result.stdout) if e.get("phase") == "downloading" and "rate" in e]
    assert rates and max(rates) <= 6 << 20, rates  # libtorrent's own payload rate; unlimited it is 40+ MiB/s
