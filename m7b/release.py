"""The one resolver from what a user typed to a release: its folder, manifest and torrent.

Every command (verify, convert, run, smoke, seed, fetch, show, list) goes through `resolve_release`, so the same
text means the same release everywhere. The priority, first match wins:

1. A magnet link (`magnet:?...`) is a magnet: the store release with that info-hash (named by its manifest, by
   the store's release record, else by the magnet's display name).
2. Text that looks like a path — it contains `/`, starts with `.` or `~`, or ends with `.torrent` or `.toml` — is
   a path:
   - `FILE.torrent`: the release that torrent describes (named by its manifest, the store's record, else the
     torrent's name), in the store;
   - `FILE.toml`: the manifest's release, in the store;
   - a folder: that folder. Its torrent is `FOLDER.torrent` beside it (as `m7b release create` writes it), else
     the store's torrent when the folder is the store's release folder, else a torrent in the store with the
     folder's name; its manifest is `FOLDER.toml` (or the lowercased name) beside it, else the store's.
3. A bare word is a release name: a manifest name, or a release the store recorded when it fetched one without a
   manifest. Only when no release has that name is it a folder of that name in the current directory. When both
   exist the release wins, and `Release.note` names the folder (pass `./NAME` for it).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from m7b.errors import M7bError, NotFoundError
from m7b.magnet import Magnet, is_magnet, parse_magnet
from m7b.manifests.loader import SkippedManifest, known_manifests, load_manifest, scan_manifests
from m7b.manifests.schema import Manifest
from m7b.paths import check_path_length, path_problem
from m7b.store import Store
from m7b.torrent import load_torrent


@dataclass(frozen=True)
class Release:
    """A resolved release. `folder` may not exist yet (a store release not fetched)."""

    name: str
    folder: Path
    manifest: Manifest | None
    torrent: Path | None  # its .torrent metadata, when one is on disk
    in_store: bool
    info_hash: str | None = None
    magnet: Magnet | None = None
    note: str | None = None  # set when the text could have meant something else too


NoteCallback = Callable[[str], None]  # sees `Release.note` when the text could have meant something else too


def ignore_note(note: str) -> None:
    """The default NoteCallback: a library caller reads `Release.note` when it wants it."""


def looks_like_path(text: str) -> bool:
    return "/" in text or text.startswith((".", "~")) or text.endswith((".torrent", ".toml"))


SLUG_MAX = 128  # characters of a store name made from a display name (a folder name holds 255 bytes)


def slug(text: str) -> str:
    """A store name made from a torrent's or magnet's display name (at most SLUG_MAX characters)."""
    made = re.sub(r"[^a-z0-9._-]+", "-", text.lower()[: SLUG_MAX * 4]).strip("-.")[:SLUG_MAX].rstrip("-.")
    return made or "release"


def manifest_for_hash(info_hash: str, store: Store) -> Manifest | None:
    for manifest in known_manifests(store.manifests_dir).values():
        if info_hash in manifest.torrent.hashes:
            return manifest
    return None


def skipped_manifests(store: Store) -> tuple[SkippedManifest, ...]:
    """The manifest files in the store's `manifests/` (and M7B_MANIFESTS) that do not load, with the reason: every
    name lookup leaves them out, so a caller names them in a warning and goes on."""
    return scan_manifests(store.manifests_dir).skipped


def store_torrent(store: Store, *hashes: str | None) -> Path | None:
    """The .torrent the store kept for the first of `hashes` it has."""
    for info_hash in hashes:
        if info_hash and store.torrent_path(info_hash).is_file():
            return store.torrent_path(info_hash)
    return None


def resolve_release(text: str, store: Store) -> Release:
    """What `text` names, by the priority in this module's docstring; NotFoundError when it names nothing."""
    if is_magnet(text):
        magnet = parse_magnet(text)
        return _by_hash(store, magnet.info_hash, magnet.name or magnet.info_hash, magnet=magnet)
    check_path_length(text, "the release")
    if looks_like_path(text):
        return _by_path(store, Path(text).expanduser())
    by_name = _by_name(store, text)
    here = Path(text)
    if by_name is not None:
        if here.is_dir() and here.resolve() != by_name.folder.resolve():
            note = f"using the store's release {by_name.name}; a folder ./{text} also exists: pass ./{text} for it"
            return replace(by_name, note=note)
        return by_name
    if here.is_dir():
        return _folder(store, here)
    raise NotFoundError(
        f"unknown release {text!r}; known releases: {', '.join(release_names(store)) or 'none'} (store: "
        f"{store.home}; see `m7b list`); or name a folder, a magnet, a .torrent or a manifest .toml"
    )


def release_for(target: str | Release, store: Store, on_note: NoteCallback = ignore_note) -> Release:
    """What a library entry point was given: text resolved by `resolve_release` (its note, if any, to `on_note`),
    or a Release already resolved, as it is."""
    if isinstance(target, Release):
        return target
    release = resolve_release(target, store)
    if release.note:
        on_note(release.note)
    return release


def release_names(store: Store) -> dict[str, Manifest | None]:
    """Every release known by name, sorted: manifests, releases the store recorded, and folders in the store."""
    names: dict[str, Manifest | None] = dict(known_manifests(store.manifests_dir))
    for name in store.recorded_releases():
        names.setdefault(name, None)
    if store.releases_dir.is_dir():
        for folder in store.releases_dir.iterdir():
            if folder.is_dir() and not folder.name.startswith("."):
                names.setdefault(folder.name, None)
    return dict(sorted(names.items()))


def name_for_hash(store: Store, info_hash: str, display_name: str) -> str:
    """The store name for a torrent: its manifest's, the store's record's, else a slug of its display name (with
    the info-hash's first 8 digits when that slug is another release's name)."""
    manifest = manifest_for_hash(info_hash, store)
    if manifest is not None:
        return manifest.name
    recorded = store.recorded_releases()
    for name, ih in recorded.items():
        if ih == info_hash.lower():
            return name
    name = slug(display_name)
    taken = known_manifests(store.manifests_dir)
    if (name in recorded and recorded[name] != info_hash.lower()) or (
        name in taken and info_hash not in taken[name].torrent.hashes
    ):
        name = f"{name}-{info_hash.lower()[:8]}"
    return name


def _store_release(store: Store, name: str, manifest: Manifest | None, info_hash: str | None) -> Release:
    hashes = manifest.torrent.hashes if manifest else ()
    return Release(
        name=name,
        folder=store.release_dir(name),
        manifest=manifest,
        torrent=store_torrent(store, info_hash, *hashes),
        in_store=True,
        info_hash=info_hash or (manifest.torrent.info_hash or None if manifest else None),
    )


def _by_name(store: Store, name: str) -> Release | None:
    manifests = known_manifests(store.manifests_dir)
    if name in manifests:
        return _store_release(store, name, manifests[name], store.recorded_releases().get(name))
    recorded = store.recorded_releases()
    if name in recorded:
        return _store_release(store, name, None, recorded[name])
    if name.startswith(".") or path_problem(name) is not None:  # no store release folder has such a name
        return None
    if store.release_dir(name).is_dir():  # a store folder with no record (older m7b)
        torrent = _store_torrent_named(store, name)
        info_hash = load_torrent(torrent)[1].info_hash if torrent else None
        return _store_release(store, name, manifest_for_hash(info_hash, store) if info_hash else None, info_hash)
    return None


def _by_hash(store: Store, info_hash: str, display_name: str, magnet: Magnet | None = None) -> Release:
    name = name_for_hash(store, info_hash, display_name)
    manifest = manifest_for_hash(info_hash, store)
    return replace(_store_release(store, name, manifest, info_hash), magnet=magnet)


def _by_path(store: Store, path: Path) -> Release:
    if path.suffix == ".toml":
        manifest = load_manifest(path)
        return _store_release(store, manifest.name, manifest, store.recorded_releases().get(manifest.name))
    if path.suffix == ".torrent":
        if not path.is_file():
            raise NotFoundError(f"torrent file {path} not found")
        _, meta = load_torrent(path)
        return replace(_by_hash(store, meta.info_hash, meta.name), torrent=path)
    if not path.is_dir():
        what = "is a file; expected a release folder" if path.exists() else "not found"
        raise NotFoundError(f"release folder {path} {what}")
    return _folder(store, path)


def _folder(store: Store, path: Path) -> Release:
    folder = path.resolve()
    if folder.parent == store.releases_dir.resolve():
        by_name = _by_name(store, folder.name)
        if by_name is not None:
            return by_name
    beside_torrent = folder.parent / f"{folder.name}.torrent"
    torrent = beside_torrent if beside_torrent.is_file() else _store_torrent_named(store, folder.name)
    manifest = None
    for candidate in (folder.parent / f"{folder.name}.toml", folder.parent / f"{folder.name.lower()}.toml"):
        if candidate.is_file():
            manifest = load_manifest(candidate)
            break
    if torrent is None and manifest is not None:
        torrent = store_torrent(store, *manifest.torrent.hashes)
    info_hash = None
    if torrent is not None:
        _, meta = load_torrent(torrent)
        info_hash = meta.info_hash
        manifest = manifest or manifest_for_hash(info_hash, store)
    in_store = folder.parent == store.releases_dir.resolve()
    return Release(
        name=folder.name if in_store else folder.name.lower(),
        folder=folder,
        manifest=manifest,
        torrent=torrent,
        in_store=in_store,
        info_hash=info_hash,
    )


def _store_torrent_named(store: Store, name: str) -> Path | None:
    """A torrent the store kept whose name (or its store name) is `name`: a folder fetched to another place."""
    if not store.torrents_dir.is_dir():
        return None
    for candidate in sorted(store.torrents_dir.glob("*.torrent")):
        try:
            _, meta = load_torrent(candidate)
        except M7bError:  # an unreadable stored torrent is simply not this folder's
            continue
        if name in (meta.name, slug(meta.name)):
            return candidate
    return None


def require_present(release: Release) -> Release:
    """The release, when its folder exists; else NotFoundError saying how to get it."""
    if release.folder.is_dir():
        return release
    if release.in_store:
        raise NotFoundError(
            f"release {release.name} is not in the store ({release.folder} does not exist): fetch it first with "
            f"`m7b fetch {release.name}`, or pass its folder"
        )
    raise NotFoundError(f"release folder {release.folder} not found")


def runtime_folder(release: Release, store: Store) -> Path:
    """The folder the runtime loads: the store's converted native folder when there is one, else the release's."""
    if not release.in_store:
        return require_present(release).folder
    candidates = [store.converted_dir(release.name, "native"), release.folder]
    for folder in candidates:
        if (folder / "params.json").is_file() and (folder / "tokenizer.model").is_file():
            return folder
    raise NotFoundError(
        f"release {release.name!r} has no runnable folder in the store {store.home} (looked in "
        f"{', '.join(str(c) for c in candidates)}): fetch it with `m7b fetch {release.name}` or pass a release folder"
    )
