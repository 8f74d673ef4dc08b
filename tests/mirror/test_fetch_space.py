"""m7b fetch says the release's size and the free space first, and refuses (nothing written) when it cannot fit."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from swarm import plain_seeder

from m7b import space

LOOPBACK = ("--loopback", "--listen", "127.0.0.1:0")


@contextlib.contextmanager
def small_disk(folder: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `folder` (skips the test where mounting is not permitted)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


@pytest.mark.slow
def test_fetch_states_size_and_free_space_before_writing(cli, m7b_home, publish) -> None:
    pub = publish()
    with plain_seeder(pub.torrent, pub.folder) as peer:
        result = cli("fetch", pub.torrent, "--peer", peer, *LOOPBACK, "--json")
    assert result.code == 0, result.stderr
    stream = events(result.stdout)
    first = stream[0]
    assert first["event"] == "space"
    assert first["size"] == pub.meta.total_size and first["present"] == 0 and first["fits"] is True
    assert first["free"] > first["needed"] >= pub.meta.total_size
    assert first["folder"] == str(m7b_home / "releases" / pub.folder.name)
    # for people: one line on stderr with the same figures
    with plain_seeder(pub.torrent, pub.folder) as peer:
        again = cli("fetch", pub.torrent, "--peer", peer, *LOOPBACK)
    assert again.code == 0, again.stderr
    assert "already there" in again.stderr and " free in " in again.stderr  # a refetch counts what is there


def test_a_torrent_that_does_not_fit_its_dest_is_refused_before_any_write(cli, m7b_home, publish, tmp_path) -> None:
    pub = publish()
    with small_disk(tmp_path / "small") as disk:
        dest = disk / "copy"
        result = cli("fetch", pub.torrent, "--dest", dest, *LOOPBACK, "--json", "--timeout", "10")
        assert result.code == 8, result.stderr
        assert list(disk.iterdir()) == []  # no folder, no .partial
        error = events(result.stdout)[-1]
        assert error["event"] == "error" and error["size"] == pub.meta.total_size
        assert error["free"] < error["needed"]
        assert "Nothing was written" in result.stderr and str(dest) in result.stderr
    assert not (m7b_home / "resume").exists() or list((m7b_home / "resume").iterdir()) == []


@pytest.mark.slow
def test_a_magnet_too_big_for_the_store_is_refused_once_its_metadata_arrives(cli, publish, tmp_path, monkeypatch):
    pub = publish()
    with small_disk(tmp_path / "small") as home:
        monkeypatch.setenv("M7B_HOME", str(home))
        with plain_seeder(pub.torrent, pub.folder) as peer:
            result = cli("fetch", pub.magnet, "--peer", peer, *LOOPBACK, "--json", "--timeout", "30")
        assert result.code == 8, result.stderr
        stream = events(result.stdout)
        assert [e for e in stream if e["event"] == "space"][0]["fits"] is False
        assert stream[-1]["event"] == "error" and stream[-1]["needed"] > stream[-1]["free"]
        releases = home / "releases"
        assert not releases.exists() or not [p for p in releases.iterdir() if p.name.endswith(".partial")]
        assert not (home / "resume").exists() or list((home / "resume").iterdir()) == []
        assert all(e.get("done", 0) == 0 for e in stream if e["event"] == "progress")


def test_room_counts_what_is_already_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a").write_bytes(b"x" * 100_000)
    monkeypatch.setattr(space, "free_bytes", lambda path: 50_000 + space.MARGIN_BYTES * 2)
    room = space.room_for(tmp_path, [("a", 100_000), ("b", 40_000)])
    assert room.present == 100_000 and room.fits  # only b is missing
    room = space.room_for(tmp_path, [("a", 100_000), ("b", 4_000_000)])
    assert not room.fits
    with pytest.raises(space.NoRoomError) as refused:
        space.check_room(room, "r")
    assert refused.value.exit_code == 8 and refused.value.data["needed"] > refused.value.data["free"]
