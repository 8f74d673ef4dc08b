"""The one release resolver: the same text names the same release for every command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from m7b.errors import InvalidInputError, NotFoundError
from m7b.manifests.writer import manifest_to_toml
from m7b.mirror.create import create_release
from m7b.mirror.fetch import fetch_target
from m7b.mirror.seed import seed_release
from m7b.release import resolve_release, runtime_folder
from m7b.store import ReleaseState, Store
from m7b.verify.release import verify


def _store_release(store: Store, folder: Path, name: str, with_manifest: bool = True) -> str:
    """Put `folder` into the store as release `name`, as fetch leaves it: files, its .torrent, a manifest or a
    release record. Returns the info-hash."""
    made = create_release(folder, manifest_name=name, publisher="m7b tests")
    shutil.copytree(folder, store.release_dir(name))
    store.torrents_dir.mkdir(parents=True, exist_ok=True)
    store.torrent_path(made.meta.info_hash).write_bytes(made.torrent)
    if with_manifest:
        store.manifests_dir.mkdir(parents=True, exist_ok=True)
        (store.manifests_dir / f"{name}.toml").write_text(manifest_to_toml(made.manifest))
    else:
        store.record_release(name, made.meta.info_hash)
    return made.meta.info_hash


def test_a_store_release_wins_over_a_folder_of_the_same_name_and_says_so(
    m7b_home, tiny_release, tmp_path, monkeypatch
) -> None:
    store = Store.from_env()
    _store_release(store, tiny_release, "foo")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "foo").mkdir()
    (tmp_path / "foo" / "unrelated.txt").write_text("not a release")
    release = resolve_release("foo", store)
    assert release.in_store and release.folder == store.release_dir("foo")
    assert release.note and "./foo" in release.note
    # run, verify and seed all take this one
    assert runtime_folder(release, store) == store.release_dir("foo")
    assert seed_release(release).folder == store.release_dir("foo")
    # the folder is still reachable as a path
    local = resolve_release("./foo", store)
    assert not local.in_store and local.folder == (tmp_path / "foo").resolve() and local.note is None


@pytest.mark.slow
def test_cli_verify_foo_takes_the_store_release_and_prints_the_note(
    cli, m7b_home, tiny_release, tmp_path, monkeypatch
) -> None:
    _store_release(Store.from_env(), tiny_release, "foo")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "foo").mkdir()
    result = cli("verify", "foo", "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["root"] == str(m7b_home / "releases" / "foo")
    assert "./foo also exists" in result.stderr


def test_an_empty_folder_does_not_hide_the_store_release_from_seed(m7b_home, tiny_release, tmp_path, monkeypatch):
    store = Store.from_env()
    _store_release(store, tiny_release, "small")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "small").mkdir()
    seed = seed_release(resolve_release("small", store))
    assert seed.folder == store.release_dir("small") and seed.name == "small"


def test_a_bare_word_is_a_folder_only_when_no_release_has_that_name(m7b_home, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    release = resolve_release("mine", Store.from_env())
    assert not release.in_store and release.folder == (tmp_path / "mine").resolve()
    with pytest.raises(NotFoundError, match="unknown release 'nothing-here'"):
        resolve_release("nothing-here", Store.from_env())


@pytest.mark.slow
@pytest.mark.parametrize("name", [None, "another-name"])
def test_release_create_beside_the_folder_is_found_by_verify_seed_and_fetch(cli, m7b_home, tiny_release, name) -> None:
    created = cli("release", "create", tiny_release, "--json", *(["--name", name] if name else []))
    assert created.code == 0, created.stderr
    # both files are named after the folder (the torrent's name), whatever the manifest's release name is
    assert json.loads(created.stdout)["manifest"] == str(tiny_release.parent / f"{tiny_release.name}.toml")
    release = resolve_release(str(tiny_release), Store.from_env())
    assert release.torrent == tiny_release.parent / f"{tiny_release.name}.torrent"
    assert release.manifest is not None and release.manifest.name == (name or tiny_release.name.lower())
    assert seed_release(release).folder == tiny_release.resolve()
    target = fetch_target(release)
    assert target.info_hash == json.loads(created.stdout)["info_hash_v1"] and target.torrent is not None
    verified = cli("verify", tiny_release, "--json")
    assert verified.code == 0, verified.stderr
    doc = json.loads(verified.stdout)
    assert doc["verdict"] == "ok" and doc["bound_to_magnet"] and doc["bound_to_publisher"]


@pytest.mark.slow
def test_a_release_fetched_without_a_manifest_is_listed_verified_and_seeded_by_name(
    cli, m7b_home, tiny_release
) -> None:
    store = Store.from_env()
    info_hash = _store_release(store, tiny_release, "tiny-r1", with_manifest=False)
    assert store.recorded_releases() == {"tiny-r1": info_hash}
    listed = json.loads(cli("list", "--json").stdout)["releases"]
    row = next(r for r in listed if r["name"] == "tiny-r1")
    assert row["info_hash"] == info_hash and row["manifest"] is False and row["state"] == "downloaded"
    result = cli("verify", "tiny-r1", "--json")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["bound_to_magnet"] and doc["report_path"] == str(store.report_path("tiny-r1"))
    assert store.state_of("tiny-r1") == ReleaseState.VERIFIED
    by_folder = resolve_release(str(store.release_dir("tiny-r1")), store)
    assert by_folder.torrent == store.torrent_path(info_hash) and by_folder.name == "tiny-r1"
    assert seed_release(resolve_release("tiny-r1", store)).meta.info_hash == info_hash
    converted = cli("convert", "tiny-r1", "--json")
    assert converted.code == 0, converted.stderr
    assert json.loads(converted.stdout)["verified_source"] is True


@pytest.mark.slow
def test_verify_from_python_saves_the_same_report_the_cli_reads(m7b_home, tiny_release) -> None:
    store = Store.from_env()
    _store_release(store, tiny_release, "tiny-py")
    assert not store.is_verified("tiny-py")
    outcome = verify(resolve_release("tiny-py", store), store)
    assert outcome.report.verdict == "ok" and outcome.report_path == store.report_path("tiny-py")
    assert store.is_verified("tiny-py")
    saved = json.loads(store.report_path("tiny-py").read_text())
    assert saved["report_path"] == str(store.report_path("tiny-py"))


@pytest.mark.slow
def test_a_folder_outside_the_store_gets_no_saved_report(m7b_home, tiny_release) -> None:
    store = Store.from_env()
    outcome = verify(resolve_release(str(tiny_release), store), store)
    assert outcome.report_path is None and not store.reports_dir.exists()


def test_a_store_release_not_fetched_yet_says_how_to_get_it(m7b_home) -> None:
    store = Store.from_env()
    with pytest.raises(NotFoundError, match="m7b fetch mistral-7b-v0.1"):
        verify(resolve_release("mistral-7b-v0.1", store), store)


def test_a_torrent_file_and_a_manifest_file_name_their_release(m7b_home, tiny_release) -> None:
    store = Store.from_env()
    made = create_release(tiny_release, manifest_name="tiny-files")
    torrent = tiny_release.parent / "x.torrent"
    torrent.write_bytes(made.torrent)
    manifest = tiny_release.parent / "tiny-files.toml"
    manifest.write_text(manifest_to_toml(made.manifest))
    from_torrent = resolve_release(str(torrent), store)
    assert from_torrent.torrent == torrent and from_torrent.info_hash == made.meta.info_hash
    assert from_torrent.in_store and from_torrent.folder == store.release_dir(from_torrent.name)
    from_manifest = resolve_release(str(manifest), store)
    assert from_manifest.name == "tiny-files" and from_manifest.manifest is not None


def test_a_magnet_names_the_store_release_recorded_for_its_hash(m7b_home, tiny_release) -> None:
    store = Store.from_env()
    info_hash = _store_release(store, tiny_release, "tiny-mag", with_manifest=False)
    release = resolve_release(f"magnet:?xt=urn:btih:{info_hash}&dn=other-name", store)
    assert release.name == "tiny-mag" and release.torrent == store.torrent_path(info_hash)
    assert release.magnet is not None


def test_a_new_magnet_does_not_take_another_releases_name(m7b_home, tiny_release) -> None:
    store = Store.from_env()
    _store_release(store, tiny_release, "taken", with_manifest=False)
    release = resolve_release("magnet:?xt=urn:btih:" + "ab" * 20 + "&dn=taken", store)
    assert release.name == "taken-abababab"


def test_a_malformed_magnet_is_invalid_input(m7b_home) -> None:
    with pytest.raises(InvalidInputError):
        resolve_release("magnet:?xt=urn:btih:nothex", Store.from_env())
