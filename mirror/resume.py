"""Resume data (libtorrent's fastresume) and m7b's record of a completed, hash-checked download."""

from __future__ import annotations

import json
from pathlib import Path

import libtorrent as lt

from m7b.atomic import write_bytes, write_text
from m7b.store import Store, file_state, unchanged_since
from m7b.torrent import TorrentMeta


def load_resume(store: Store, info_hash: str) -> lt.add_torrent_params | None:
    """The saved resume data for this info-hash, or None when there is none or it does not parse."""
    path = store.resume_path(info_hash)
    if not path.is_file():
        return None
    try:
        return lt.read_resume_data(path.read_bytes())
    except RuntimeError:
        return None


def save_resume(store: Store, info_hash: str, params: lt.add_torrent_params) -> None:
    store.ensure_dir(store.resume_dir)
    write_bytes(store.resume_path(info_hash), lt.write_resume_data_buf(params))


def record_complete(store: Store, meta: TorrentMeta, folder: Path) -> None:
    """After every piece passed its hash: remember the files' sizes and mtimes, so a seed can trust them."""
    store.ensure_dir(store.resume_dir)
    files = [file_state(folder, f.path) for f in meta.data_files]
    doc = {"info_hash": meta.info_hash, "folder": str(folder.resolve()), "files": files}
    write_text(store.completion_path(meta.info_hash), json.dumps(doc, indent=1))


def still_complete(store: Store, meta: TorrentMeta, folder: Path) -> bool:
    """True when m7b recorded this folder complete and no file changed size or mtime since."""
    try:
        doc = json.loads(store.completion_path(meta.info_hash).read_text())
        files = doc["files"]
        return (
            doc["folder"] == str(folder.resolve())
            and [e.get("path") for e in files] == [f.path for f in meta.data_files]
            and all(unchanged_since(folder, e) for e in files)
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
