"""Where a torrent's files go, and the checks done on metadata before any data is written.

A release folder holds the torrent's files directly (`releases/<name>/RELEASE`, …), not under the torrent's
own folder name, so the files are renamed when the torrent is added.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from m7b.errors import MismatchError
from m7b.manifests.schema import Manifest
from m7b.torrent import TorrentMeta


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
