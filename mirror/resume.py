"""Resume data (libtorrent's fastresume) and m7b's record of a completed, hash-checked download, one of each per
copy of a torrent: the store's own copy, and each other folder it was fetched into (`--dest`), so that a fetch into
one folder never takes another copy's pieces for its own."""

from __future__ import annotations

import json
from pathlib import Path

import libtorrent as lt

from m7b.atomic import write_bytes, write_text
from m7b.store import Store, file_state, partial_dir_for, unchanged_since
from m7b.torrent import TorrentMeta


def copy_folder(store: Store, folder: Path) -> Path | None:
    """What names the copy in `folder` among a torrent's copies: None for a release folder of the store, else the
    folder itself (see Store.resume_path)."""
    try:
        in_store = Path(folder).resolve().parent == store.releases_dir.resolve()
    except OSError:
        in_store = False
    return None if in_store else Path(folder)


def load_resume(store: Store, info_hash: str, folder: Path) -> lt.add_torrent_params | None:
    """The saved resume data of the copy in `folder`, or None when there is none or it does not parse. (Resume data
    an older m7b kept per info-hash only is taken when it was saved for this very folder.)"""
    key = copy_folder(store, folder)
    params = _read(store.resume_path(info_hash, key))
    if params is None and key is not None:
        older = _read(store.resume_path(info_hash))
        saved = Path(older.save_path) if older is not None and older.save_path else None
        if saved is not None and saved.resolve() in (Path(folder).resolve(), partial_dir_for(Path(folder)).resolve()):
            params = older
    return params


def _read(path: Path) -> lt.add_torrent_params | None:
    if not path.is_file():
        return None
    try:
        return lt.read_resume_data(path.read_bytes())
    except RuntimeError:
        return None


def save_resume(store: Store, info_hash: str, params: lt.add_torrent_params, folder: Path) -> None:
    store.ensure_dir(store.resume_dir)
    write_bytes(store.resume_path(info_hash, copy_folder(store, folder)), lt.write_resume_data_buf(params))


def record_complete(store: Store, meta: TorrentMeta, folder: Path) -> None:
    """After every piece passed its hash: remember the files' sizes and mtimes, so a seed can trust them."""
    store.ensure_dir(store.resume_dir)
    files = [file_state(folder, f.path) for f in meta.data_files]
    doc = {"info_hash": meta.info_hash, "folder": str(folder.resolve()), "files": files}
    write_text(store.completion_path(meta.info_hash, copy_folder(store, folder)), json.dumps(doc, indent=1))


def still_complete(store: Store, meta: TorrentMeta, folder: Path) -> bool:
    """True when m7b recorded this folder complete and no file changed size or mtime since."""
    key = copy_folder(store, folder)
    paths = [store.completion_path(meta.info_hash, key)]
    if key is not None:
        paths.append(store.completion_path(meta.info_hash))  # an older m7b's record (it names its folder)
    return any(_record_matches(path, meta, folder) for path in paths)


def _record_matches(path: Path, meta: TorrentMeta, folder: Path) -> bool:
    try:
        doc = json.loads(path.read_text())
        files = doc["files"]
        return (
            doc["folder"] == str(folder.resolve())
            and [e.get("path") for e in files] == [f.path for f in meta.data_files]
            and all(unchanged_since(folder, e) for e in files)
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
