"""m7b seed: one session serving several releases, refusing any that fails its check."""

from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from swarm import tree_digests

from m7b.store import Store

LOOPBACK = ("--loopback", "--listen", "127.0.0.1:0")


@contextmanager
def running_seed(*args: str | Path, nofile: int | None = None) -> Iterator[tuple[subprocess.Popen, dict]]:
    """Start `m7b seed ARGS --json`; yield it with its first status once no release is still checking. `nofile`:
    the seed's descriptor limit (RLIMIT_NOFILE), as a service manager would set it."""

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    proc = subprocess.Popen(
        [sys.executable, "-m", "m7b", "seed", *map(str, args), *LOOPBACK, "--json", "--interval", "0.5"],
        preexec_fn=limit if nofile is not None else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = None
        for line in proc.stdout:
            status = json.loads(line)
            if all(r["state"] != "checking" for r in status["releases"]):
                ready = status
                break
        assert ready, proc.stderr.read()
        yield proc, ready
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def stop(proc: subprocess.Popen) -> list[dict]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    return [json.loads(line) for line in out.splitlines()]


@pytest.mark.slow
def test_seed_serves_good_releases_and_refuses_an_altered_one(cli, m7b_home, publish, tiny_release: Path) -> None:
    good_dir = Path(shutil.copytree(tiny_release, tiny_release.parent / "Good-Rel"))
    bad_dir = Path(shutil.copytree(tiny_release, tiny_release.parent / "Bad-Rel"))
    good = publish(name="good-rel", folder=good_dir)
    publish(name="bad-rel", folder=bad_dir)
    with open(bad_dir / "consolidated.00.pth", "r+b") as fh:  # altered on disk after publishing
        fh.seek(4_000_000)
        byte = fh.read(1)
        fh.seek(4_000_000)
        fh.write(bytes([byte[0] ^ 1]))
    with running_seed(good_dir, bad_dir) as (proc, status):
        states = {r["name"]: r for r in status["releases"]}
        assert states["good-rel"]["state"] == "seeding"
        assert states["bad-rel"]["state"] == "refused"
        assert states["bad-rel"]["failed_files"] == ["consolidated.00.pth"]
        assert "1 of" in states["bad-rel"]["reason"] and "not served" in states["bad-rel"]["reason"]
        peer = f"127.0.0.1:{status['listen_port']}"
        fetched = cli(
            "fetch", good.magnet, "--peer", peer, *LOOPBACK, "--json", env={"M7B_HOME": str(m7b_home / "leecher")}
        )
        assert fetched.code == 0, fetched.stderr
        events = stop(proc)
    assert tree_digests(m7b_home / "leecher" / "releases" / "good-rel") == tree_digests(good_dir)
    last_status = [e for e in events if e["event"] == "status"][-1]
    uploaded = {r["name"]: r["uploaded"] for r in last_status["releases"]}
    assert uploaded["good-rel"] >= good.meta.total_size and uploaded["bad-rel"] == 0
    assert events[-1] == {"event": "stopped"}
    assert Store(m7b_home).resume_path(good.meta.info_hash, good_dir).is_file()  # kept per folder served


@pytest.mark.slow
def test_a_refused_release_serves_no_byte(cli, m7b_home, publish, tiny_release: Path) -> None:
    pub = publish()
    (pub.folder / "params.json").write_text((pub.folder / "params.json").read_text().replace("64", "65", 1))
    with running_seed(pub.folder) as (proc, status):
        assert status["releases"][0]["state"] == "refused"
        result = cli(
            "fetch",
            pub.magnet,
            "--peer",
            f"127.0.0.1:{status['listen_port']}",
            *LOOPBACK,
            "--timeout",
            "3",
            env={"M7B_HOME": str(m7b_home / "leecher")},
        )
        assert result.code == 7
        stop(proc)


@pytest.mark.slow
def test_a_fetched_release_is_served_from_the_record_of_its_checked_download(cli, m7b_home, publish) -> None:
    from swarm import plain_seeder

    pub = publish(name="served")
    (m7b_home / "manifests").mkdir(parents=True)
    shutil.copy(pub.manifest, m7b_home / "manifests" / "served.toml")
    with plain_seeder(pub.torrent, pub.folder) as peer:
        assert cli("fetch", "served", "--peer", peer, *LOOPBACK).code == 0
    with running_seed("served") as (proc, status):
        release = status["releases"][0]
        assert (release["name"], release["state"], release["trusted_record"]) == ("served", "seeding", True)
        stop(proc)
    (m7b_home / "releases" / "served" / "RELEASE").write_text("edited since the download")
    with running_seed("served") as (proc, status):
        release = status["releases"][0]
        assert (release["state"], release["trusted_record"]) == ("refused", False)
        assert "RELEASE" in release["failed_files"]  # (its piece also spans the next file)
        stop(proc)


@pytest.mark.slow
def test_seed_without_a_torrent_says_how_to_make_one(cli, m7b_home, tiny_release: Path) -> None:
    result = cli("seed", tiny_release, *LOOPBACK)
    assert result.code == 3
    assert f"m7b release create {tiny_release}" in result.stderr
    unknown = cli("seed", "mistral-7b-v0.1", *LOOPBACK)
    assert unknown.code == 3 and "m7b fetch mistral-7b-v0.1" in unknown.stderr


@pytest.mark.slow
def test_a_passing_verify_report_lets_the_mirror_skip_the_full_recheck(cli, m7b_home, publish) -> None:
    pub = publish(name="reported")
    (m7b_home / "manifests").mkdir(parents=True)
    shutil.copy(pub.manifest, m7b_home / "manifests" / "reported.toml")
    shutil.copytree(pub.folder, m7b_home / "releases" / "reported")
    (m7b_home / "torrents").mkdir()
    shutil.copy(pub.torrent, m7b_home / "torrents" / f"{pub.meta.info_hash}.torrent")
    with running_seed("reported") as (proc, status):
        assert status["releases"][0]["trusted_record"] is False  # no record yet: a full recheck ran
        stop(proc)
    (m7b_home / "resume" / f"{pub.meta.info_hash}.complete.json").unlink()  # forget the recheck's own record
    verified = cli("verify", "reported", "--json")
    assert verified.code == 0, verified.stderr
    with running_seed("reported") as (proc, status):
        assert (status["releases"][0]["state"], status["releases"][0]["trusted_record"]) == ("seeding", True)
        stop(proc)


def test_rate_and_peer_options_reach_the_session(cli, m7b_home, tiny_release: Path) -> None:
    from m7b.cli.mirror import parse_rate, session_options
    from m7b.mirror.session import make_session, settings

    options = session_options("127.0.0.1:0", True, upload_limit=parse_rate("2M", "--upload-limit"), max_connections=7)
    pack = settings(options)
    assert (pack["upload_rate_limit"], pack["connections_limit"]) == (2 << 20, 7)
    session = make_session(options)
    assert session.listen_port() != 0
    bad = cli("seed", tiny_release, *LOOPBACK, "--upload-limit", "fast")
    assert bad.code == 4 and "--upload-limit 'fast'" in bad.stderr
