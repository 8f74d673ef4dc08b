"""Where a torrent's files go, and the checks done on metadata before any data is written.

A release folder holds the torrent's files directly (`releases/<name>/RELEASE`, …), not under the torrent's
own folder name, so the files are renamed when the torrent is added.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import libtorrent as lt

from m7b.errors import MismatchError, UnsafeError
from m7b.manifests.schema import Manifest
from m7b.mirror.torrent import TorrentMeta, meta_from_info


def _check_component(part: Any, where: str) -> None:
    text = part.decode("utf-8", "replace") if isinstance(part, bytes) else str(part)
    if text in ("", ".", "..") or "/" in text or "\\" in text or "\x00" in text or text.startswith("~"):
        raise UnsafeError(
            f"torrent metadata names the path element {text!r} in {where}: it could escape the "
            "download folder, so the torrent was refused and nothing was written"
        )


def _walk_file_tree(tree: dict, where: str) -> None:
    for key, value in tree.items():
        if key == b"":  # a file entry in a v2 file tree
            continue
        _check_component(key, where)
        if isinstance(value, dict):
            _walk_file_tree(value, where)


def check_info_paths(info_section: bytes) -> None:
    """Check the raw info dictionary (libtorrent silently rewrites unsafe paths; m7b refuses them)."""
    info = lt.bdecode(info_section)
    if not isinstance(info, dict):
        raise UnsafeError("torrent metadata is not a dictionary: refused")
    _check_component(info.get(b"name", b""), "the torrent name")
    for entry in info.get(b"files", []):
        attr = entry.get(b"attr", b"")
        if b"l" in attr:
            raise UnsafeError("torrent metadata holds a symlink: refused, nothing written")
        if b"p" in attr:
            continue
        for part in entry.get(b"path.utf-8", entry.get(b"path", [])):
            _check_component(part, "a file path")
    if b"file tree" in info:
        _walk_file_tree(info[b"file tree"], "the v2 file tree")


def checked_meta(ti: lt.torrent_info, raw: dict | None = None) -> TorrentMeta:
    check_info_paths(ti.info_section())
    return meta_from_info(ti, raw)


def check_against_manifest(meta: TorrentMeta, manifest: Manifest) -> None:
    """The torrent's info-hash and file list must agree with what the publisher vouched for."""
    t = manifest.torrent
    for label, ours, theirs in (("v1", meta.info_hash_v1, t.info_hash_v1), ("v2", meta.info_hash_v2, t.info_hash_v2)):
        if ours and theirs and ours != theirs:
            raise MismatchError(
                f"torrent info-hash {label} is {ours}, but the manifest of {manifest.name} says {theirs}: refused"
            )
    files = {f.path: f.size for f in meta.data_files}
    problems = []
    for fact in manifest.files:
        if fact.path not in files:
            problems.append(f"{fact.path} is missing")
        elif fact.size is not None and files[fact.path] != fact.size:
            problems.append(f"{fact.path} has {files[fact.path]:,} bytes, the manifest says {fact.size:,}")
    if t.files_complete:
        listed = {f.path for f in manifest.files}
        problems += [f"{p} is not in the manifest" for p in sorted(set(files) - listed)]
    if problems:
        raise MismatchError(
            f"the torrent's metadata contradicts the manifest of {manifest.name}: "
            f"{'; '.join(problems)}. Refused before downloading anything; check the magnet"
        )


def renamed_files(meta: TorrentMeta) -> dict[int, str]:
    """Index -> path inside the release folder, for every file libtorrent would put under the torrent name."""
    return {i: f.path for i, f in enumerate(meta.files) if not f.pad}


def files_not_in_place(meta: TorrentMeta, folder: Path) -> list[str]:
    """The torrent's files that are missing from `folder` or have another size than the torrent says."""
    wrong = []
    for f in meta.data_files:
        path = folder / PurePosixPath(f.path)
        if not path.is_file() or path.stat().st_size != f.size:
            wrong.append(f.path)
    return wrong
