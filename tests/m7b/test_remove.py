"""`m7b rm`: only store releases, resolved by the one resolver; a wrong name leaves nothing behind, not even a lock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from m7b.errors import NotFoundError, UnsafeError
from m7b.release import resolve_release
from m7b.remove import remove_release, store_release
from m7b.store import Store

HASH = "ab" * 20


def _stored(home: Path, name: str = "tiny") -> Store:
    """A store holding release `name`: its folder with one file and its release record."""
    store = Store(home)
    store.release_dir(name).mkdir(parents=True)
    (store.release_dir(name) / "params.json").write_text("{}")
    store.record_release(name, HASH)
    return store


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.mark.parametrize("name", ["../../../tmp/x/evil", "..", ".", "", "a/b", "~x", "a\\b", "a\x00b"])
def test_every_store_path_from_a_release_name_refuses_a_name_that_is_not_a_plain_folder_name(
    tmp_path: Path, name: str
) -> None:
    store = Store(tmp_path / "home")
    builders = [
        store.release_dir,
        store.partial_dir,
        store.incomplete_marker,
        store.release_lock,
        store.converted_root,
        store.report_path,
        store.release_record_path,
        lambda n: store.converted_dir(n, "native"),
        lambda n: store.converted_lock(n, "native"),
    ]
    for build in builders:
        with pytest.raises(UnsafeError, match="could escape the store"):
            build(name)


def test_rm_of_an_unknown_or_escaping_name_takes_no_lock_and_writes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = Store(home)
    with pytest.raises(NotFoundError, match="nothing of release 'nosuch' is in the store"):
        remove_release(store, "nosuch")
    with pytest.raises(UnsafeError):
        remove_release(store, "../../../x/evil")
    assert _tree(tmp_path) == []  # no lock file, in the store or outside it


def test_rm_resolves_a_store_folder_path_and_a_magnet_to_the_store_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _stored(tmp_path / "home")
    monkeypatch.chdir(store.releases_dir)
    assert store_release(resolve_release("./tiny", store), store).name == "tiny"
    magnet = f"magnet:?xt=urn:btih:{HASH}&dn=whatever"
    assert store_release(resolve_release(magnet, store), store).name == "tiny"
    removal = remove_release(store, "tiny")
    assert removal is not None and {p.kind for p in removal.remove} == {"release", "record"}
    assert not store.release_dir("tiny").exists() and not store.release_record_path("tiny").exists()


def test_rm_refuses_a_folder_outside_the_store_and_leaves_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _stored(tmp_path / "home")
    mine = tmp_path / "tiny"
    mine.mkdir()
    (mine / "params.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NotFoundError, match="never your folders"):
        store_release(resolve_release("./tiny", store), store)
    assert (mine / "params.json").is_file() and store.release_dir("tiny").is_dir()


def test_rm_of_a_known_release_with_nothing_in_the_store_is_not_found(tmp_path: Path) -> None:
    store = Store(tmp_path / "home")
    with pytest.raises(NotFoundError, match="nothing of release 'mistral-7b-v0.1' is in the store"):
        store_release(resolve_release("mistral-7b-v0.1", store), store)
    assert not store.home.exists()


@pytest.mark.slow
def test_rm_on_the_command_line_resolves_refuses_and_leaves_no_lock(cli, m7b_home: Path, tmp_path: Path) -> None:
    outside = tmp_path / "x"
    outside.mkdir()
    assert cli("rm", "nosuch", "--yes").code == 3
    escaping = cli("rm", f"../../../..{outside}/evil", "--yes")
    assert escaping.code == 3 and "not found" in escaping.stderr
    assert _tree(outside) == [] and _tree(m7b_home) == []
    nothing = cli("rm", "mistral-7b-v0.1", "--yes")
    assert nothing.code == 3 and "nothing of release 'mistral-7b-v0.1'" in nothing.stderr
    _stored(m7b_home)
    removed = cli("rm", f"magnet:?xt=urn:btih:{HASH}", "--yes", "--json")
    assert removed.code == 0, removed.stderr
    assert {p["kind"] for p in json.loads(removed.stdout)["removed"]} == {"release", "record"}
