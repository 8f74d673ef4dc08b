"""The library's `verify`: a resolved release checked against its manifest and torrent, and a store release's
report saved where `Store.is_verified` (and so `m7b list`, convert and seed) reads it, whoever calls it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from m7b.progress import ProgressCallback, ignore_progress
from m7b.release import Release, require_present
from m7b.store import Store

from .check import verify_release
from .report import VerifyReport


@dataclass(frozen=True)
class Verification:
    report: VerifyReport
    report_path: Path | None  # where the report was saved (store releases only)


def verify(release: Release, store: Store, *, progress: ProgressCallback = ignore_progress) -> Verification:
    """Verify a resolved release against its manifest and torrent; a store release's report is saved where
    `Store.is_verified` (and so `m7b list`, convert and seed) reads it, whoever calls this."""
    require_present(release)
    name = release.name if release.in_store else None
    # the hash the user asked for: the magnet's, or the one fetch recorded (never one read from the torrent itself)
    asked = release.magnet.info_hash if release.magnet else None
    if asked is None and release.in_store:
        asked = store.recorded_releases().get(release.name)
    report = verify_release(
        release.folder, release.manifest, release.torrent, name=name, info_hash=asked, progress=progress
    )
    saved = store.save_report(release.name, report.to_json()) if release.in_store else None
    return Verification(report, saved)
