"""m7b fetch on a real local swarm: libtorrent seeders, opentracker, over 127.0.0.1 TCP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import libtorrent as lt
import pytest
from swarm import free_port, local_opentracker, plain_seeder, tree_digests, wait_for

LOOPBACK = ("--loopback", "--listen", "127.0.0.1:0")


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def start_fetch(magnet: str, peer: str, resume_interval: str) -> subprocess.Popen:
    """`m7b fetch MAGNET --peer PEER --json` as a child process whose JSON lines the test reads as they come."""
    command = [sys.executable, "-m", "m7b", "fetch", magnet, "--peer", peer, *LOOPBACK, "--json"]
    return subprocess.Popen([*command, "--resume-interval", resume_interval], stdout=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_fetch_by_magnet_through_a_real_tracker(cli, m7b_home, publish, tmp_path) -> None:
    # the tracker's whitelist names the info-hash, and the torrent names the tracker: pick the port first
    port = free_port()
    pub = publish(trackers=[f"http://127.0.0.1:{port}/announce"])
    with (
        local_opentracker(tmp_path / "tracker", [pub.meta.info_hash], port=port) as tracker,
        plain_seeder(pub.torrent, pub.folder, tracker=tracker),
    ):
        result = cli("fetch", pub.magnet, *LOOPBACK, "--json", "--timeout", "60")
    assert result.code == 0, result.stderr
    done = last_json(result.stdout)
    assert done["event"] == "done" and done["downloaded_bytes"] == pub.meta.total_size
    release = m7b_home / "releases" / done["name"]
    assert tree_digests(release) == tree_digests(pub.folder)
    assert (m7b_home / "torrents" / f"{pub.meta.info_hash}.torrent").is_file()
    assert not (m7b_home / "releases" / f".{done['name']}.partial").exists()
    events = [json.loads(line) for line in result.stdout.splitlines()[:-1]]
    phases = {e["phase"] for e in events if e["event"] == "progress"}
    assert "done" in phases
    # fetched without a manifest: a store release by name, verified against the torrent the store kept
    record = json.loads((m7b_home / "releases" / f".{done['name']}.json").read_text())
    assert record == {"name": done["name"], "info_hash": pub.meta.info_hash}
    listed = json.loads(cli("list", "--json").stdout)["releases"]
    assert any(r["name"] == done["name"] for r in listed)
    verified = cli("verify", done["name"], "--json")
    assert verified.code == 0, verified.stderr
    assert json.loads(verified.stdout)["bound_to_magnet"] is True


@pytest.mark.slow
def test_fetch_by_release_name_through_a_manifest(cli, m7b_home, publish) -> None:
    pub = publish(name="tiny-named")
    (m7b_home / "manifests").mkdir(parents=True)
    (m7b_home / "manifests" / "tiny-named.toml").write_text(pub.manifest.read_text())
    assert json.loads(cli("show", "tiny-named", "--json").stdout)["state"] == "absent"
    with plain_seeder(pub.torrent, pub.folder) as peer:
        result = cli("fetch", "tiny-named", "--peer", peer, *LOOPBACK)
    assert result.code == 0, result.stderr
    assert "every piece passed its SHA-1 check" in result.stderr and "m7b verify tiny-named" in result.stderr
    assert tree_digests(m7b_home / "releases" / "tiny-named") == tree_digests(pub.folder)
    assert json.loads(cli("show", "tiny-named", "--json").stdout)["state"] == "downloaded"


@pytest.mark.slow
def test_fetch_into_dest_from_a_torrent_file(cli, m7b_home, publish, tmp_path) -> None:
    pub = publish()
    dest = tmp_path / "my-copy"
    with plain_seeder(pub.torrent, pub.folder) as peer:
        result = cli("fetch", pub.torrent, "--dest", dest, "--peer", peer, *LOOPBACK, "--json")
    assert result.code == 0, result.stderr
    assert tree_digests(dest) == tree_digests(pub.folder)


@pytest.mark.slow
def test_resume_after_kill_9_downloads_only_what_was_missing(cli, m7b_home, publish) -> None:
    pub = publish()
    total, piece = pub.meta.total_size, pub.meta.piece_length
    resume = m7b_home / "resume" / f"{pub.meta.info_hash}.fastresume"
    with plain_seeder(pub.torrent, pub.folder, upload_limit=1 << 20) as slow_peer:
        proc = start_fetch(pub.magnet, slow_peer, resume_interval="0.5")
        halfway = None
        for line in proc.stdout:
            event = json.loads(line)
            if event.get("total") and event["done"] >= 0.4 * event["total"]:
                halfway = time.time()
                break
        assert halfway, "the download never reached 40%"
        assert wait_for(lambda: resume.is_file() and resume.stat().st_mtime > halfway, 10)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    name = pub.folder.name  # the magnet's dn: no manifest in the store names this release
    assert (m7b_home / "releases" / f".{name}.partial").is_dir()
    assert not (m7b_home / "releases" / name).exists()
    with plain_seeder(pub.torrent, pub.folder) as peer:
        result = cli("fetch", pub.magnet, "--peer", peer, *LOOPBACK, "--json")
    assert result.code == 0, result.stderr
    done = last_json(result.stdout)
    had = done["pieces_at_start"] * piece
    assert had >= 0.35 * total
    refetched = done["downloaded_bytes"] - (total - had)
    assert refetched <= 4 * piece, f"{refetched} bytes already verified were downloaded again"
    assert tree_digests(m7b_home / "releases" / name) == tree_digests(pub.folder)


@pytest.mark.slow
def test_a_peer_serving_a_corrupted_copy_is_outvoted_by_the_pieces_hashes(cli, m7b_home, publish, tmp_path) -> None:
    pub = publish()
    bad = tmp_path / "bad-copy"
    import shutil

    shutil.copytree(pub.folder, bad)
    data = bytearray((bad / "consolidated.00.pth").read_bytes())
    for offset in range(0, len(data), 50_000):
        data[offset] ^= 0xFF
    (bad / "consolidated.00.pth").write_bytes(bytes(data))
    with (
        plain_seeder(pub.torrent, bad, trust_without_check=True) as liar,
        plain_seeder(pub.torrent, pub.folder, upload_limit=2 << 20) as honest,
    ):
        result = cli("fetch", pub.magnet, "--peer", liar, "--peer", honest, *LOOPBACK, "--json")
    assert result.code == 0, result.stderr
    done = last_json(result.stdout)
    assert done["hash_failures"] >= 1
    assert tree_digests(m7b_home / "releases" / done["name"]) == tree_digests(pub.folder)


@pytest.mark.slow
def test_a_torrent_whose_path_escapes_is_refused_and_nothing_is_written(cli, m7b_home, tmp_path) -> None:
    info = {
        b"name": b"evil",
        b"piece length": 16384,
        b"pieces": b"\x00" * 20,
        b"files": [{b"length": 5, b"path": [b"..", b"..", b"escaped.txt"]}],
    }
    evil = tmp_path / "evil.torrent"
    evil.write_bytes(lt.bencode({b"info": info}))
    result = cli("fetch", evil, "--dest", tmp_path / "dest", *LOOPBACK)
    assert result.code == 6
    assert "'..'" in result.stderr and "escape the download folder" in result.stderr
    assert not (tmp_path / "dest").exists() and not (tmp_path.parent / "escaped.txt").exists()

    # the same metadata arriving from a peer by magnet
    ti = lt.torrent_info(lt.bencode({b"info": info}))
    session = lt.session(
        {
            "listen_interfaces": "127.0.0.1:0",
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "enable_outgoing_utp": False,
            "allow_multiple_connections_per_ip": True,
        }
    )
    atp = lt.add_torrent_params()
    atp.ti = ti
    atp.save_path = str(tmp_path / "seeder")
    atp.flags = (atp.flags | lt.torrent_flags.seed_mode) & ~(lt.torrent_flags.paused | lt.torrent_flags.auto_managed)
    session.add_torrent(atp)
    magnet = f"magnet:?xt=urn:btih:{ti.info_hashes().v1}&dn=evil"
    result = cli("fetch", magnet, "--peer", f"127.0.0.1:{session.listen_port()}", *LOOPBACK, "--timeout", "30")
    session.pause()
    assert result.code == 6, result.stderr
    assert "escape the download folder" in result.stderr
    assert not (m7b_home / "releases").exists() or list((m7b_home / "releases").iterdir()) == []


@pytest.mark.slow
def test_metadata_that_contradicts_the_manifest_is_refused_before_any_data(cli, m7b_home, publish) -> None:
    pub = publish(name="contradicted")
    text = pub.manifest.read_text()
    true_size = pub.meta.data_files[-1].size
    assert f"size = {true_size}" in text
    (m7b_home / "manifests").mkdir(parents=True)
    (m7b_home / "manifests" / "contradicted.toml").write_text(text.replace(f"size = {true_size}", "size = 12345"))
    with plain_seeder(pub.torrent, pub.folder) as peer:
        result = cli("fetch", "contradicted", "--peer", peer, *LOOPBACK)
    assert result.code == 5, result.stderr
    assert "contradicts the manifest of contradicted" in result.stderr
    assert f"tokenizer.model has {true_size:,} bytes, the manifest says 12,345" in result.stderr
    releases = m7b_home / "releases"
    assert not releases.exists() or list(releases.iterdir()) == []


@pytest.mark.slow
def test_no_peers_ends_with_a_clear_timeout(cli, m7b_home) -> None:
    result = cli("fetch", "magnet:?xt=urn:btih:" + "ab" * 20 + "&dn=nobody", *LOOPBACK, "--timeout", "1")
    assert result.code == 7
    assert "no peer sent the metadata" in result.stderr and "--timeout" in result.stderr
    releases = m7b_home / "releases"
    assert not releases.exists() or list(releases.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_fetch_stopped_before_the_metadata_leaves_no_partial_folder(m7b_home, sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "m7b", "fetch", "magnet:?xt=urn:btih:" + "cd" * 20 + "&dn=nobody", *LOOPBACK, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline())["phase"] == "metadata"  # the download (and its .partial) has begun
    assert (m7b_home / "releases" / ".nobody.partial").is_dir()
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert list((m7b_home / "releases").iterdir()) == []


@pytest.mark.slow
def test_sigterm_saves_resume_data_and_the_next_run_continues(cli, m7b_home, publish) -> None:
    pub = publish()
    resume = m7b_home / "resume" / f"{pub.meta.info_hash}.fastresume"
    with plain_seeder(pub.torrent, pub.folder, upload_limit=1 << 20) as slow_peer:
        proc = start_fetch(pub.magnet, slow_peer, resume_interval="60")
        for line in proc.stdout:
            event = json.loads(line)
            if event.get("total") and event["done"] >= 0.25 * event["total"]:
                break
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert json.loads(out.strip().splitlines()[-1])["event"] == "interrupted"
    assert resume.is_file()  # written on exit, not by the 60 s timer
    saved = lt.read_resume_data(resume.read_bytes())
    assert sum(saved.have_pieces) >= 0.2 * pub.meta.num_pieces
    with plain_seeder(pub.torrent, pub.folder) as peer:
        result = cli("fetch", pub.magnet, "--peer", peer, *LOOPBACK, "--json")
    assert result.code == 0, result.stderr
    assert last_json(result.stdout)["pieces_at_start"] >= 0.2 * pub.meta.num_pieces


@pytest.mark.slow
def test_a_disk_that_refuses_writes_stops_with_a_clear_error(m7b_home, publish) -> None:
    import resource

    pub = publish()

    def small_disk() -> None:  # every file may grow to 1 MiB at most: writes beyond fail like a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    with plain_seeder(pub.torrent, pub.folder) as peer:
        proc = subprocess.run(
            [sys.executable, "-m", "m7b", "fetch", pub.magnet, "--peer", peer, *LOOPBACK, "--timeout", "30"],
            capture_output=True,
            text=True,
            preexec_fn=small_disk,
            timeout=120,
        )
    assert proc.returncode == 8, proc.stderr
    assert "could not write" in proc.stderr and "resume data was kept" in proc.stderr
    assert not (m7b_home / "releases" / pub.folder.name).exists()  # nothing under the final name


@pytest.mark.slow
def test_fetching_a_release_already_in_the_store_rechecks_it_without_peers(cli, m7b_home, publish) -> None:
    pub = publish()
    with plain_seeder(pub.torrent, pub.folder) as peer:
        first = cli("fetch", pub.magnet, "--peer", peer, *LOOPBACK, "--json")
    assert first.code == 0, first.stderr
    again = cli("fetch", pub.magnet, *LOOPBACK, "--json", "--timeout", "20")  # no seeder any more
    assert again.code == 0, again.stderr
    done = last_json(again.stdout)
    assert done["downloaded_bytes"] == 0 and done["pieces_at_start"] == pub.meta.num_pieces
    assert tree_digests(m7b_home / "releases" / done["name"]) == tree_digests(pub.folder)


@pytest.mark.slow
def test_fetch_repairs_a_damaged_release_in_place(cli, m7b_home, publish) -> None:
    pub = publish()
    with plain_seeder(pub.torrent, pub.folder) as peer:
        assert cli("fetch", pub.magnet, "--peer", peer, *LOOPBACK).code == 0
        checkpoint = m7b_home / "releases" / pub.folder.name / "consolidated.00.pth"
        with open(checkpoint, "r+b") as fh:  # one flipped byte, same size
            fh.seek(3_000_000)
            byte = fh.read(1)
            fh.seek(3_000_000)
            fh.write(bytes([byte[0] ^ 0x55]))
        repaired = cli("fetch", pub.magnet, "--peer", peer, *LOOPBACK, "--json")
    assert repaired.code == 0, repaired.stderr
    done = last_json(repaired.stdout)
    assert done["pieces_at_start"] == 0  # the recorded state no longer matched: every piece was rechecked
    assert 0 < done["downloaded_bytes"] <= pub.meta.piece_length
    assert tree_digests(m7b_home / "releases" / pub.folder.name) == tree_digests(pub.folder)
