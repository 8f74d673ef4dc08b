"""What fetch and seed show while they run: connected seeds and peers, each tracker's status, elapsed time, and
sizes in one unit system (binary: KiB, MiB, MiB/s), as JSON lines and as compact lines off a terminal."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import pytest
from swarm import free_port, local_opentracker, plain_seeder
from test_seed import LOOPBACK, running_seed

# every size a person sees: a number and a binary unit (never kB, MB, GB)
SIZE = re.compile(r"\b\d[\d,]*(?:\.\d+)? ?(B|KiB|MiB|GiB|TiB|kB|KB|MB|GB|TB)\b")


def _sizes_are_binary(text: str) -> set[str]:
    units = {m.group(1) for m in SIZE.finditer(text)}
    assert units, text
    assert units <= {"B", "KiB", "MiB", "GiB", "TiB"}, units
    return units


@pytest.mark.slow
def test_fetch_shows_trackers_seeds_peers_and_elapsed_in_json_and_in_a_log(cli, m7b_home, publish, tmp_path) -> None:
    port = free_port()
    announce = f"http://127.0.0.1:{port}/announce"
    dead = f"http://127.0.0.1:{free_port()}/announce"  # nothing listens there
    pub = publish(trackers=[announce, dead])
    with (
        local_opentracker(tmp_path / "tracker", [pub.meta.info_hash], port=port),
        plain_seeder(pub.torrent, pub.folder, tracker=announce, upload_limit=4 << 20) as peer,
    ):
        fetched = cli("fetch", pub.magnet, *LOOPBACK, "--json", "--timeout", "30")
        (m7b_home / "releases").rename(tmp_path / "first")
        (m7b_home / "resume").rename(tmp_path / "first-resume")
        human = cli("fetch", pub.torrent, *LOOPBACK, "--peer", peer, "--timeout", "30")
    assert fetched.code == 0, fetched.stderr
    events = [json.loads(line) for line in fetched.stdout.splitlines()]
    progress = [e for e in events if e["event"] == "progress" and e["phase"] != "done"]
    assert progress and all({"trackers", "web_seeds", "seeds", "peers", "elapsed"} <= e.keys() for e in progress)
    assert [t["url"] for t in progress[0]["trackers"]] == [announce, dead]
    final = {t["url"]: t for t in progress[-1]["trackers"]}
    assert final[announce]["status"] == "working" or any(
        t["status"] == "working" for e in progress for t in e["trackers"] if t["url"] == announce
    )
    assert all(e["seeds"] <= e["peers"] for e in progress)
    assert [e["elapsed"] for e in progress] == sorted(e["elapsed"] for e in progress)
    # the human display, captured (not a terminal): compact lines, never a redrawn bar
    assert human.code == 0, human.stderr
    lines = [line for line in human.stderr.splitlines() if line.startswith("downloading")]
    assert lines, human.stderr
    assert "seeds /" in lines[0] and "peers connected" in lines[0] and "elapsed " in lines[0]
    assert f"tracker {announce}:" in lines[0] and f"tracker {dead}:" in lines[0]
    assert "\r" not in human.stderr and "━" not in human.stderr
    _sizes_are_binary(human.stderr)


@pytest.mark.slow
def test_seed_prints_a_compact_line_per_interval_off_a_terminal(m7b_home, publish, tmp_path) -> None:
    pub = publish(name="shown")
    port = free_port()
    announce = f"http://127.0.0.1:{port}/announce"
    with (
        local_opentracker(tmp_path / "tracker-json", [pub.meta.info_hash], port=port),
        running_seed(pub.folder, "--tracker", announce) as (proc, status),
    ):
        release = status["releases"][0]
        name = release["name"]
        assert status["elapsed"] >= 0 and {"seeds", "peers", "leechers", "trackers"} <= release.keys()
        proc.kill()
        proc.wait()
    # a tracker of its own: the seed killed above never announced `stopped`, so the first tracker still lists it,
    # and the second seed would count a peer that is gone (a test never depends on a process having left a list)
    port = free_port()
    announce = f"http://127.0.0.1:{port}/announce"
    with local_opentracker(tmp_path / "tracker-human", [pub.meta.info_hash], port=port):
        human = subprocess.Popen(
            [sys.executable, "-m", "m7b", "seed", pub.folder, *LOOPBACK, "--tracker", announce, "--interval", "0.3"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            lines = []
            for line in human.stdout:
                lines.append(line)
                if "seeding" in line and f"tracker {announce}: working" in line:
                    break
            human.send_signal(signal.SIGTERM)
            rest, errors = human.communicate(timeout=30)
        finally:
            if human.poll() is None:
                human.kill()
    assert human.returncode == 0, errors
    text = "".join(lines) + rest
    assert f"tracker {announce}: working" in text, text
    seeding = [line for line in text.splitlines() if line.startswith(f"{name} seeding")]
    assert len(seeding) >= 2, text  # one line per interval, not one table redrawn in place
    # the counts, not their values: the tracker hands the seed its own address back, and a connection to it can
    # count as a peer for a moment before the handshake shows it is itself (a CI run saw "0 seeds / 1 peers")
    assert re.search(r"\b\d+ seeds / \d+ peers connected · uploaded .+ · elapsed \d+:\d\d", seeding[0]), seeding[0]
    assert "┃" not in text and "\x1b[" not in text
    _sizes_are_binary(text)
