"""Binding to the publisher: the files a manifest names, their sizes and the digests it publishes."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from m7b.manifests.schema import Manifest
from m7b.progress import ProgressCallback, ignore_progress

from .digest import FileDigestLane, FileRead, ReadItem, read_stream
from .findings import Finding, Status


def check_manifest_files(
    manifest: Manifest,
    found: Mapping[str, FileRead],
    sha256: Mapping[str, str],
    md5: Mapping[str, str],
    torrent_paths: set[str] | None = None,
) -> list[Finding]:
    """Every manifest file present, its size and published digests equal; files it does not name reported."""
    out: list[Finding] = []
    for facts in manifest.files:
        seen = found.get(facts.path)
        if seen is None or seen.size is None:
            why = seen.error if seen is not None and seen.error else "missing"
            out.append(
                Finding(
                    "manifest",
                    Status.MISSING,
                    f"{facts.path}: {why}; the manifest of {manifest.name} "
                    "names it — fetch the release again (`m7b fetch`) to complete it",
                    facts.path,
                )
            )
            continue
        checked = []
        if facts.size is not None:
            if seen.size != facts.size:
                out.append(
                    Finding(
                        "manifest",
                        Status.MISMATCH,
                        f"{facts.path}: {seen.size:,} bytes, the manifest says {facts.size:,}",
                        facts.path,
                        {"expected": facts.size, "found": seen.size},
                    )
                )
                continue
            checked.append("size")
        for algo, published, computed in (("sha256", facts.sha256, sha256), ("md5", facts.md5, md5)):
            if published is None:
                continue
            got = computed.get(facts.path)
            if got != published:
                out.append(
                    Finding(
                        "manifest",
                        Status.MISMATCH,
                        f"{facts.path}: {algo} {got}, the manifest publishes {published}",
                        facts.path,
                        {"algorithm": algo, "expected": published, "found": got},
                    )
                )
                break
            checked.append(algo)
        else:
            if checked:
                out.append(
                    Finding("manifest", Status.OK, f"{facts.path}: {', '.join(checked)} as published", facts.path)
                )
            else:
                out.append(
                    Finding(
                        "manifest",
                        Status.NOTE,
                        f"{facts.path}: present; the publisher published no size "
                        "or digest for it (the torrent's pieces are its proof)",
                        facts.path,
                    )
                )
    named = {f.path for f in manifest.files}
    for rel, seen in sorted(found.items()):
        if rel in named or seen.size is None:
            continue
        in_torrent = torrent_paths is not None and rel in torrent_paths
        if manifest.torrent.files_complete and in_torrent:
            out.append(
                Finding(
                    "manifest",
                    Status.MISMATCH,
                    f"{rel}: the torrent holds this file but the manifest, "
                    "which lists every file of the release, does not name it",
                    rel,
                )
            )
        else:
            where = "the torrent names it" if in_torrent else "neither the manifest nor the torrent names it"
            out.append(
                Finding(
                    "manifest",
                    Status.NOTE,
                    f"{rel}: extra file on disk ({seen.size:,} bytes); the manifest does not name it, {where}",
                    rel,
                    {"extra": True},
                )
            )
    return out


def check_published_digests(
    manifest: Manifest, root: Path, progress: ProgressCallback = ignore_progress
) -> list[Finding]:
    """The files in `root` that the manifest publishes a sha256 or md5 for, read once (both digests from one read)
    and compared as `verify` compares them: the failing findings (none when every published digest holds). What a
    fetch runs once every piece has passed, so a torrent whose data contradicts its publisher is said at once."""
    published = tuple(f for f in manifest.files if f.sha256 or f.md5)
    if not published:
        return []
    sha256 = FileDigestLane("sha256", {f.path for f in published if f.sha256})
    md5 = FileDigestLane("md5", {f.path for f in published if f.md5})
    found = read_stream([ReadItem(f.path, root / f.path) for f in published], [sha256, md5], progress=progress)
    findings = check_manifest_files(dataclasses.replace(manifest, files=published), found, sha256.digests, md5.digests)
    return [f for f in findings if f.status not in (Status.OK, Status.NOTE)]
