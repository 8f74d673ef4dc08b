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
