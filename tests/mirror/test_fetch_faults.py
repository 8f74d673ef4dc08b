"""Faults a user meets around `m7b fetch`: many-file torrents, files already in --dest, two commands at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from swarm import plain_seeder, tree_digests

from m7b.mirror.create import create_release

LOOPBACK = ("--no-dht", "--listen", "127.0.0.1:0")


def _many_file_release(folder: Path, count: int) -> tuple[Path, str, str]:
    """A release of `count` tiny files (a few pieces, each spanning hundreds of files); its .torrent and magnet."""
    folder.mkdir(parents=True)
    for i in range(count):
        (folder / f"part-{i:05d}.txt").write_bytes(f"file {i}\n".encode())
    made = create_release(folder, publisher="m7b tests")
    torrent = folder.parent / f"{folder.name}.torrent"
    torrent.write_bytes(made.torrent)
    return torrent, made.magnet, made.meta.info_hash


@pytest.mark.slow
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
