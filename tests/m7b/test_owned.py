"""m7b/owned.py, the one rule for what m7b writes, renames or removes, as its callers use it: atomic outputs, the
store's folders, locks, stale temporaries, removals. A planted symlink is refused (exit 6, naming it and where it
leads) or, for a temporary of m7b's own, removed itself; what it leads to is never changed."""

from __future__ import annotations

import os
import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from m7b.atomic import atomic_dir, atomic_file, remove_stale_partials, write_text
from m7b.errors import UnsafeError
from m7b.locks import hold
from m7b.owned import LinkInTheWayError, open_own, own_dir, remove_own
from m7b.store import Store

PRECIOUS = b"the user's own bytes\n"


def victim(root: Path) -> Path:
    folder = root / "victim"
    folder.mkdir(exist_ok=True)
    (folder / "file").write_bytes(PRECIOUS)
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("dangling", [False, True], ids=["to a file", "dangling"])
def test_an_atomic_file_whose_final_name_is_a_link_is_refused(tmp_path: Path, dangling: bool) -> None:
    target = victim(tmp_path) / ("absent" if dangling else "file")
    link = tmp_path / "out.json"
    link.symlink_to(target)
    with pytest.raises(LinkInTheWayError) as raised:
        write_text(link, "m7b's record\n")
    err = raised.value
    assert err.exit_code == 6 and isinstance(err, UnsafeError)
    assert err.data == {"path": str(link), "link_target": str(target)}
    assert str(link) in str(err) and str(target) in str(err) and "remove the link" in str(err)
    assert link.is_symlink() and snapshot(tmp_path / "victim") == {"file": PRECIOUS}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "victim"]  # no temporary left


def test_an_atomic_dir_whose_final_name_is_a_link_is_refused(tmp_path: Path) -> None:
    target = victim(tmp_path)
    (tmp_path / "out").symlink_to(target)
    with pytest.raises(LinkInTheWayError), atomic_dir(tmp_path / "out") as tmp:
        (tmp / "x").write_text("never")
    assert snapshot(target) == {"file": PRECIOUS}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "victim"]


def test_an_atomic_dir_in_the_store_refuses_a_link_above_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    target = victim(tmp_path)
    (home / "converted").symlink_to(target)
    with pytest.raises(LinkInTheWayError, match="converted"), atomic_dir(home / "converted" / "x" / "native", home):
        pass
    assert snapshot(target) == {"file": PRECIOUS} and sorted(p.name for p in target.iterdir()) == ["file"]


def test_a_stale_temporary_that_is_a_link_is_removed_itself(tmp_path: Path) -> None:
    target = victim(tmp_path)
    link = tmp_path / ".out.999999999.x.partial"
    link.symlink_to(target)
    assert remove_stale_partials(tmp_path / "out") == [link]
    assert not link.is_symlink() and snapshot(target) == {"file": PRECIOUS}


def test_a_lock_file_that_is_a_link_is_refused_not_truncated(tmp_path: Path) -> None:
    store = Store(tmp_path / "home")
    target = victim(tmp_path) / "file"
    lock = store.release_lock("tiny")
    lock.parent.mkdir(parents=True)
    lock.symlink_to(target)
    with pytest.raises(LinkInTheWayError, match="take a lock"), hold(store, lock, "release tiny"):
        pass
    assert target.read_bytes() == PRECIOUS


def test_store_folders_below_the_home_must_not_be_links_but_the_home_may_be(tmp_path: Path) -> None:
    real = tmp_path / "bigger-disk"
    real.mkdir()
    (tmp_path / "home").symlink_to(real)
    store = Store(tmp_path / "home")
    assert store.ensure_dir(store.resume_dir).is_dir()  # the home is the user's to point anywhere
    target = victim(tmp_path)
    (real / "reports").symlink_to(target)
    with pytest.raises(LinkInTheWayError, match="reports"):
        store.save_report("tiny", {"verdict": "ok"})
    (real / "torrents").symlink_to(target)  # a release's signature is kept beside its torrent: never through a link
    with pytest.raises(LinkInTheWayError, match="torrents"):
        store.save_signature("ab" * 20, b"{}")
    assert sorted(p.name for p in target.iterdir()) == ["file"]


def test_open_own_and_remove_own_never_follow(tmp_path: Path) -> None:
    target = victim(tmp_path)
    (tmp_path / "f").symlink_to(target / "file")
    with pytest.raises(LinkInTheWayError):
        open_own(tmp_path / "f", os.O_WRONLY | os.O_TRUNC)
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "to-file").symlink_to(target / "file")
    (tree / "to-folder").symlink_to(target)
    assert remove_own(tree) and not tree.exists()
    assert remove_own(tmp_path / "f") and not (tmp_path / "f").is_symlink()
    assert not remove_own(tmp_path / "f")
    assert snapshot(target) == {"file": PRECIOUS}


NAMES = st.text(string.ascii_lowercase + ".-_", min_size=1, max_size=6).filter(lambda n: n not in (".", ".."))


@given(parts=st.lists(NAMES, min_size=1, max_size=5), at=st.integers(0, 4), real=st.booleans())
def test_own_dir_never_creates_anything_through_a_link(tmp_path_factory, parts: list[str], at: int, real: bool) -> None:
    """Whatever the path below the root and wherever a link stands on it (or none does), own_dir either makes
    real folders all the way or refuses naming the link; nothing appears in what the link leads to."""
    base = tmp_path_factory.mktemp("own")
    target = victim(base)
    root = base / "root"
    root.mkdir()
    path = root.joinpath(*parts)
    linked = None
    if not real:
        linked = root.joinpath(*parts[: min(at, len(parts) - 1) + 1])
        own_dir(linked.parent, root)
        linked.symlink_to(target)
    if linked is None:
        assert own_dir(path, root) == path
        assert all(not p.is_symlink() and p.is_dir() for p in [path, *path.parents] if p.is_relative_to(root))
    else:
        with pytest.raises(LinkInTheWayError) as raised:
            own_dir(path, root)
        assert raised.value.path == linked
    assert snapshot(target) == {"file": PRECIOUS} and sorted(p.name for p in target.iterdir()) == ["file"]


@given(names=st.lists(st.text(min_size=1, max_size=20), max_size=8), links=st.lists(st.booleans(), max_size=8))
def test_stale_temporaries_fuzz_never_follow_nor_touch_others(tmp_path_factory, names, links) -> None:
    """The names beside an output folder are outside data (anyone may put files there): remove_stale_partials
    removes only `.NAME.PID.*.partial` of a dead PID or a link under such a name, and never through a link."""
    base = tmp_path_factory.mktemp("stale")
    target = victim(base)
    work = base / "work"
    work.mkdir()
    made = []
    for i, raw in enumerate(names):
        name = raw.replace("/", "_").replace("\x00", "_")
        if name in (".", "..") or (work / name).exists() or (work / name).is_symlink():
            continue
        candidate = f".out.{name}.partial" if i % 2 else name
        try:
            if i < len(links) and links[i]:
                (work / candidate).symlink_to(target)
            else:
                (work / candidate).mkdir()
        except OSError:  # a name the file system refuses (too long, not encodable)
            continue
        made.append(candidate)
    removed = remove_stale_partials(work / "out")
    for p in removed:
        assert p.parent == work and p.name.startswith(".out.") and p.name.endswith(".partial")
        assert not p.exists() and not p.is_symlink()
    assert snapshot(target) == {"file": PRECIOUS} and sorted(p.name for p in target.iterdir()) == ["file"]
    assert {p.name for p in work.iterdir()} == set(made) - {p.name for p in removed}


def test_atomic_file_still_writes_and_replaces_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "out"
    path.write_bytes(b"old")
    with atomic_file(path) as fh:
        fh.write(b"new")
    assert path.read_bytes() == b"new" and not path.is_symlink()
