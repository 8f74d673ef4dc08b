"""Faults a user meets around `m7b fetch`: many-file torrents, files already in --dest, two commands at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import libtorrent as lt
import pytest
from swarm import plain_seeder, tree_digests

from m7b.mirror.create import create_release

LOOPBACK = ("--loopback", "--listen", "127.0.0.1:0")

pytestmark = pytest.mark.slow  # each runs m7b as a user would, in processes of its own (3-8 s each here)


def _many_file_release(folder: Path, count: int) -> tuple[Path, str, str]:
    """A release of `count` tiny files (a few pieces, each spanning hundreds of files); its .torrent and magnet."""
    folder.mkdir(parents=True)
    for i in range(count):
        (folder / f"part-{i:05d}.txt").write_bytes(f"file {i}\n".encode())
    made = create_release(folder, publisher="m7b tests")
    torrent = folder.parent / f"{folder.name}.torrent"
    torrent.write_bytes(made.torrent)
    return torrent, made.magnet, made.meta.info_hash


@pytest.mark.parametrize("by", ["torrent", "magnet"])
def test_a_many_file_torrent_completes_on_its_first_fetch(cli, m7b_home, tmp_path, by) -> None:
    # 2,000 files in 2 pieces: a piece passes its hash (from libtorrent's write buffer) long before its
    # ~1,000 files are written; the download must not be judged before the writes have landed
    folder = tmp_path / "many"
    torrent, magnet, _ = _many_file_release(folder, 2000)
    with plain_seeder(torrent, folder) as peer:
        result = cli("fetch", torrent if by == "torrent" else magnet, "--peer", peer, *LOOPBACK, "--json")
    assert result.code == 0, result.stderr
    done = json.loads(result.stdout.splitlines()[-1])
    assert tree_digests(m7b_home / "releases" / done["name"]) == tree_digests(folder)
    assert not (m7b_home / "releases" / f".{done['name']}.partial").exists()


def test_fetch_never_overwrites_a_users_file_in_dest(cli, m7b_home, publish, tmp_path) -> None:
    pub = publish()
    dest = tmp_path / "my-folder"
    dest.mkdir()
    mine = b'{"my": "own params"}\n'
    (dest / "params.json").write_bytes(mine)
    (dest / "notes.txt").write_text("mine too")
    before = tree_digests(dest)
    with plain_seeder(pub.torrent, pub.folder) as peer:
        for source in (pub.torrent, pub.magnet):  # known up front, and learnt from the swarm
            result = cli("fetch", source, "--dest", dest, "--peer", peer, *LOOPBACK, "--timeout", "30")
            assert result.code == 8, result.stderr
            assert "params.json" in result.stderr and "--repair" in result.stderr, result.stderr
            assert tree_digests(dest) == before  # byte-identical, nothing added
            # no .partial and no .incomplete marker beside the folder
            assert sorted(p.name for p in tmp_path.iterdir()) == ["m7b-home", "my-folder", "release"]

        repaired = cli("fetch", pub.torrent, "--dest", dest, "--peer", peer, *LOOPBACK, "--repair", "--json")
    assert repaired.code == 0, repaired.stderr
    after = tree_digests(dest)
    assert after.pop("notes.txt") == before["notes.txt"]
    assert after == tree_digests(pub.folder)


def test_refetching_into_a_dest_that_m7b_filled_needs_no_repair(cli, m7b_home, publish, tmp_path) -> None:
    pub = publish()
    dest = tmp_path / "copy"
    with plain_seeder(pub.torrent, pub.folder) as peer:
        assert cli("fetch", pub.torrent, "--dest", dest, "--peer", peer, *LOOPBACK).code == 0
    again = cli("fetch", pub.torrent, "--dest", dest, *LOOPBACK, "--json", "--timeout", "20")
    assert again.code == 0, again.stderr
    assert json.loads(again.stdout.splitlines()[-1])["downloaded_bytes"] == 0
    assert tree_digests(dest) == tree_digests(pub.folder)


def _fetch_process(source: str | Path, peer: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "m7b", "fetch", str(source), "--peer", peer, *LOOPBACK, "--json", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_fetches_of_one_release_take_turns(cli, m7b_home, publish) -> None:
    pub = publish()
    name = pub.folder.name
    with plain_seeder(pub.torrent, pub.folder, upload_limit=2 << 20) as slow_peer:
        first = _fetch_process(pub.magnet, slow_peer)
        assert first.stdout is not None
        json.loads(first.stdout.readline())  # its first event: it holds the release's lock by now

        refused = cli("fetch", pub.magnet, "--peer", slow_peer, *LOOPBACK, "--no-wait")
        assert refused.code == 8, refused.stderr
        assert f"release {name} is being written by pid {first.pid}" in refused.stderr
        assert "m7b fetch" in refused.stderr  # the holder's command line

        second = _fetch_process(pub.magnet, slow_peer)
        out2, err2 = second.communicate(timeout=120)
        out1, err1 = first.communicate(timeout=120)
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    events = [json.loads(line) for line in out2.splitlines()]
    assert events[0] == {
        "event": "waiting",
        "for": f"release {name}",
        "pid": first.pid,
        "command": events[0]["command"],
    }
    assert "fetch" in events[0]["command"]
    assert events[-1]["downloaded_bytes"] == 0  # it found the release complete and only rechecked it
    assert tree_digests(m7b_home / "releases" / name) == tree_digests(pub.folder)
    saved = lt.read_resume_data((m7b_home / "resume" / f"{pub.meta.info_hash}.fastresume").read_bytes())
    assert Path(saved.save_path) == m7b_home / "releases" / name
    assert not (m7b_home / "releases" / f".{name}.partial").exists()


HOLD_LOCK = """
import sys, time
from pathlib import Path
from m7b.locks import hold
from m7b.store import Store
store = Store.from_env()
with hold(store, store.converted_lock(sys.argv[1], "native"), "converted output"):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_convert_waits_for_the_command_writing_its_output(cli, m7b_home, tiny_release: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, tiny_release.name], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline().strip() == "held"
    out = tiny_release.parent / f"{tiny_release.name}-native"  # a folder outside the store converts beside itself

    refused = cli("convert", tiny_release, "--no-wait")
    assert refused.code == 8, refused.stderr
    assert f"pid {holder.pid}" in refused.stderr and HOLD_LOCK.strip().splitlines()[0] in refused.stderr
    assert not out.exists()

    waiting = subprocess.Popen(
        [sys.executable, "-m", "m7b", "convert", str(tiny_release), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert waiting.stdout is not None
    event = json.loads(waiting.stdout.readline())
    assert event["event"] == "waiting" and event["pid"] == holder.pid
    assert not out.exists()
    holder.stdin.write("\n")
    holder.stdin.flush()
    holder.wait(timeout=30)
    rest, errors = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, errors
    assert (out / "SHA256SUMS").is_file()


@pytest.mark.parametrize("where", ["proc", "file", "read-only"])
def test_a_store_that_cannot_be_written_is_a_storage_error(cli, tmp_path, publish, where) -> None:
    pub = publish()
    if where == "proc":
        home = Path("/proc/m7b-store")
    elif where == "file":
        home = tmp_path / "a-file"
        home.write_text("not a folder")
    else:
        parent = tmp_path / "read-only"
        parent.mkdir()
        parent.chmod(0o555)
        if os.access(parent, os.W_OK):
            pytest.skip("running as root: a read-only folder is writable")
        home = parent / "store"
    for args in (("fetch", pub.torrent, *LOOPBACK, "--timeout", "5"), ("convert", pub.folder)):
        result = cli(*args, env={"M7B_HOME": str(home)})
        assert result.code == 8, result.stderr
        assert str(home) in result.stderr and "M7B_HOME" in result.stderr, result.stderr
        assert "internal error" not in result.stderr
