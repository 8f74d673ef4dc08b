"""Resume keyed by where the data goes: an interrupted `fetch --dest` continues by the command its hint prints, and
the store's copy and a --dest copy never take each other's pieces."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from swarm import plain_seeder, tree_digests

pytestmark = pytest.mark.slow  # m7b in processes of its own, interrupted halfway (3-8 s each here)

LOOPBACK = ("--loopback", "--listen", "127.0.0.1:0")


def interrupted_fetch(magnet: str, dest: Path, peer: str) -> tuple[list[str], dict]:
    """`m7b fetch MAGNET --dest DEST` stopped by Ctrl-C once a quarter is in; the command its hint says to rerun
    (as words) and its interrupted event."""
    command = [sys.executable, "-m", "m7b", "fetch", magnet, "--dest", str(dest), "--peer", peer, *LOOPBACK]
    proc = subprocess.Popen(
        [*command, "--json", "--resume-interval", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        if event.get("phase") == "downloading" and event["total"] and event["done"] >= 0.25 * event["total"]:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    hint = re.search(r"rerun `(.+?)` to continue", err)
    assert hint, err
    last = json.loads(out.strip().splitlines()[-1])
    assert last["event"] == "interrupted" and last["rerun"] == hint.group(1)
    return shlex.split(hint.group(1)), last


def run_m7b(words: list[str]) -> subprocess.CompletedProcess[str]:
    assert words[0] == "m7b"
    return subprocess.run([sys.executable, "-m", "m7b", *words[1:]], capture_output=True, text=True, timeout=120)


def test_an_interrupted_dest_fetch_resumes_by_the_hinted_command(m7b_home, publish, tmp_path) -> None:
    pub = publish()
    dest = tmp_path / "my-copy"
    control: dict = {}
    with plain_seeder(pub.torrent, pub.folder, upload_limit=1 << 20, control=control) as peer:
        words, _ = interrupted_fetch(pub.magnet, dest, peer)
        # the whole command again: the magnet, its --dest (absolute), the peer and the profile
        assert words[:3] == ["m7b", "fetch", pub.magnet]
        assert words[words.index("--dest") + 1] == str(dest.resolve())
        assert words[words.index("--peer") + 1] == peer and "--loopback" in words
        control["session"].apply_settings({"upload_rate_limit": 0})
        again = run_m7b([*words, "--json"])
    assert again.returncode == 0, again.stderr
    done = json.loads(again.stdout.splitlines()[-1])
    kept = done["pieces_at_start"]
    assert kept >= 0.2 * pub.meta.num_pieces  # every verified piece was kept ...
    assert done["downloaded_bytes"] <= pub.meta.total_size - (kept - 1) * pub.meta.piece_length  # ... and not fetched
    assert done["path"] == str(dest.resolve()) or Path(done["path"]).resolve() == dest.resolve()
    assert tree_digests(dest) == tree_digests(pub.folder)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["m7b-home", "my-copy", "release"]  # no .partial left
    releases = m7b_home / "releases"
    assert not releases.exists() or [p for p in releases.iterdir() if not p.name.endswith(".json")] == []


def test_the_store_copy_and_a_dest_copy_keep_their_own_pieces(cli, m7b_home, publish, tmp_path) -> None:
    pub = publish()
    dest = tmp_path / "my-copy"
    with plain_seeder(pub.torrent, pub.folder, upload_limit=1 << 20) as slow:
        words, _ = interrupted_fetch(pub.magnet, dest, slow)
    with plain_seeder(pub.torrent, pub.folder) as peer:
        # the same magnet into the store: nothing of the --dest copy is taken for its own
        store_copy = cli("fetch", pub.magnet, "--peer", peer, *LOOPBACK, "--json")
        assert store_copy.code == 0, store_copy.stderr
        assert json.loads(store_copy.stdout.splitlines()[-1])["pieces_at_start"] == 0
        # and the --dest copy still has every piece it had
        words[words.index("--peer") + 1] = peer
        again = run_m7b([*words, "--json"])
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.splitlines()[-1])["pieces_at_start"] >= 0.2 * pub.meta.num_pieces
    assert tree_digests(dest) == tree_digests(pub.folder)
    assert tree_digests(m7b_home / "releases" / pub.folder.name) == tree_digests(pub.folder)
