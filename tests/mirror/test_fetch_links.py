"""Issue 17, item 1: a symlink where `m7b fetch` writes never redirects the write. Each fixed name fetch writes by
name (the folder, its `.partial` and `.incomplete`, the lock, the store's torrent, resume data, completion record
and release record, a file inside an unfinished `.partial`) is planted as a symlink to a victim, with a seeder
ready to send the data: the fetch refuses with exit 6 naming the link, and the victim is byte-identical."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from swarm import plain_seeder, tree_digests

from m7b.store import Store

LOOPBACK = ("--loopback", "--listen", "127.0.0.1:0", "--timeout", "20")
PRECIOUS = b'{"dim": 4096, "note": "my own params, not m7b\'s"}\n'


def victim(tmp_path: Path) -> Path:
    """What a planted link leads to: a folder of the user's own, with a `params.json` m7b must never replace."""
    folder = tmp_path / "victim"
    folder.mkdir()
    (folder / "params.json").write_bytes(PRECIOUS)
    (folder / "notes.txt").write_bytes(b"keep me\n")
    return folder


def assert_refused(result, link: Path, target: Path, before: dict[str, str]) -> None:
    assert result.code == 6, (result.code, result.stderr)
    assert str(link) in result.stderr and "symlink" in result.stderr, result.stderr
    assert "rm " in result.stderr  # says what to do next
    assert link.is_symlink()  # left as the user (or whoever) made it
    assert tree_digests(target if target.is_dir() else target.parent) == before


# (how the fetch names its release, the path it writes by name that is planted as a link, link to a folder?)
WHERE: dict[str, tuple[str, Callable[[Path, Path, str, str], Path], bool | None]] = {
    ".DEST.partial by .torrent": ("torrent", lambda home, dest, name, ih: dest.parent / f".{dest.name}.partial", True),
    ".DEST.partial by magnet": ("magnet", lambda home, dest, name, ih: dest.parent / f".{dest.name}.partial", True),
    "releases/.NAME.partial (store)": (
        "store",
        lambda home, dest, name, ih: home / "releases" / f".{name}.partial",
        True,
    ),
    "DEST itself": ("torrent", lambda home, dest, name, ih: dest, True),
    "releases/NAME itself (store)": ("store", lambda home, dest, name, ih: home / "releases" / name, True),
    ".DEST.incomplete": ("torrent", lambda home, dest, name, ih: dest.parent / f".{dest.name}.incomplete", False),
    "locks/releases/NAME.lock": (
        "store",
        lambda home, dest, name, ih: home / "locks" / "releases" / f"{name}.lock",
        False,
    ),
    "locks/ (a folder above the lock)": ("store", lambda home, dest, name, ih: home / "locks", True),
    # dangling: a link to an existing file is read as the store's torrent (a read, nothing lost); a dangling one
    # is what fetch writes through
    "torrents/IH.torrent (dangling)": (
        "magnet",
        lambda home, dest, name, ih: home / "torrents" / f"{ih}.torrent",
        None,
    ),
    # resume data and the completion record of the --dest copy (Store.resume_path: keyed by the folder)
    "resume/IH-KEY.fastresume": ("magnet", lambda home, dest, name, ih: Store(home).resume_path(ih, dest), False),
    "resume/IH-KEY.complete.json": (
        "magnet",
        lambda home, dest, name, ih: Store(home).completion_path(ih, dest),
        False,
    ),
    "resume/IH.fastresume (store)": ("store", lambda home, dest, name, ih: home / "resume" / f"{ih}.fastresume", False),
    "resume/ (the folder)": ("magnet", lambda home, dest, name, ih: home / "resume", True),
    "releases/.NAME.json (store)": ("store", lambda home, dest, name, ih: home / "releases" / f".{name}.json", False),
    "releases/ (the folder, store)": ("store", lambda home, dest, name, ih: home / "releases", True),
}


@pytest.mark.slow
@pytest.mark.parametrize("where", list(WHERE), ids=list(WHERE))
def test_a_symlink_where_fetch_writes_is_refused_and_its_target_is_untouched(
    cli, m7b_home: Path, publish, tmp_path: Path, where: str
) -> None:
    how, place, to_folder = WHERE[where]
    pub = publish()
    name = pub.folder.name  # the magnet's dn: the store name of a fetch by magnet
    dest = tmp_path / "my-copy"
    link = place(m7b_home, dest, name, pub.meta.info_hash)
    link.parent.mkdir(parents=True, exist_ok=True)
    target = victim(tmp_path)
    if not to_folder:
        target = target / ("params.json" if to_folder is False else "absent.torrent")
    link.symlink_to(target)
    before = tree_digests(target.parent if not to_folder else target)
    source = pub.torrent if how == "torrent" else pub.magnet
    where_to = ("--dest", dest) if how != "store" else ()
    with plain_seeder(pub.torrent, pub.folder) as peer:  # the data is there to be sent: nothing must land
        result = cli("fetch", source, *where_to, "--peer", peer, *LOOPBACK)
    assert_refused(result, link, target, before)
    if link != dest:
        assert not dest.exists() and not dest.is_symlink()
    assert not (m7b_home / "releases" / name).is_symlink() or link == m7b_home / "releases" / name


@pytest.mark.slow
@pytest.mark.parametrize("how", ["torrent", "magnet"])
def test_a_symlink_inside_an_unfinished_partial_is_refused(cli, m7b_home: Path, publish, tmp_path: Path, how) -> None:
    """A `.DEST.partial` left by an interrupted fetch is resumed by name: libtorrent would write through a link
    planted inside it (its `params.json` replaced by the download's)."""
    pub = publish()
    dest = tmp_path / "my-copy"
    partial = tmp_path / ".my-copy.partial"
    partial.mkdir()
    target = victim(tmp_path) / "params.json"
    (partial / "params.json").symlink_to(target)
    with plain_seeder(pub.torrent, pub.folder) as peer:
        result = cli(
            "fetch", pub.torrent if how == "torrent" else pub.magnet, "--dest", dest, "--peer", peer, *LOOPBACK
        )
    assert result.code == 6, result.stderr
    assert str(partial / "params.json") in result.stderr
    assert target.read_bytes() == PRECIOUS
    assert not dest.exists()


@pytest.mark.slow
def test_repairing_a_folder_that_holds_a_symlink_is_refused(cli, m7b_home: Path, publish, tmp_path: Path) -> None:
    """In-place repair writes the failing pieces by name: a file of the release that is a link would be written
    through, into what it leads to."""
    pub = publish()
    import shutil

    dest = Path(shutil.copytree(pub.folder, tmp_path / "my-copy"))
    target = victim(tmp_path) / "params.json"
    (dest / "params.json").unlink()
    (dest / "params.json").symlink_to(target)
    with plain_seeder(pub.torrent, pub.folder) as peer:
        result = cli("fetch", pub.torrent, "--dest", dest, "--repair", "--peer", peer, *LOOPBACK)
    assert result.code == 6, result.stderr
    assert str(dest / "params.json") in result.stderr
    assert target.read_bytes() == PRECIOUS


@pytest.mark.slow
def test_a_fetch_into_a_real_folder_beside_links_still_works(cli, m7b_home: Path, publish, tmp_path: Path) -> None:
    """What is refused is a link m7b would write through, nothing else: a --dest whose parent is reached through a
    link (the user's own tree) is fine."""
    pub = publish()
    real = tmp_path / "disk"
    real.mkdir()
    (tmp_path / "via-link").symlink_to(real)
    with plain_seeder(pub.torrent, pub.folder) as peer:
        result = cli("fetch", pub.torrent, "--dest", tmp_path / "via-link" / "copy", "--peer", peer, *LOOPBACK)
    assert result.code == 0, result.stderr
    assert tree_digests(real / "copy") == tree_digests(pub.folder)
