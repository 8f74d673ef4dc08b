"""The library's `verify`: what a user typed (or a resolved release) checked as `m7b verify` checks it — a converted
folder against the store's record of it, anything else against its manifest and torrent — and a store release's
report saved where `Store.is_verified` (and so `m7b list`, convert and seed) reads it, whoever calls it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from m7b.errors import NotFoundError
from m7b.locks import hold
from m7b.manifests.loader import load_manifest
from m7b.progress import ProgressCallback, ignore_progress
from m7b.release import NoteCallback, Release, ignore_note, release_for, require_present
from m7b.store import Store

from .check import verify_release
from .converted import verify_converted_folder
from .report import VerifyReport
from .sums import is_converted_dir


@dataclass(frozen=True)
class Verification:
    report: VerifyReport
    report_path: Path | None  # where the report was saved (store releases only)

    def to_json(self) -> dict[str, object]:
        """The document `m7b verify --json` prints: the report and where it was saved."""
        doc = self.report.to_json()
        doc["report_path"] = str(self.report_path) if self.report_path else None
        return doc


def verify(
    target: str | Release | None = None,
    store: Store | None = None,
    *,
    manifest: Path | None = None,
    torrent: Path | None = None,
    progress: ProgressCallback = ignore_progress,
    on_note: NoteCallback = ignore_note,
) -> Verification:
    """Verify what `target` names: a release name, a folder, a magnet, a .torrent or a manifest .toml (see
    `m7b.release.resolve_release`), or a resolved Release. A converted folder (one holding SHA256SUMS) is checked
    against the record the store kept when m7b converted it (`verify/converted.py`; `unvouched` without one);
    anything else against its manifest and torrent — `manifest` (a .toml) and `torrent` (a .torrent) replace the
    release's own. With no target, `manifest` names the release.

    A store release's report is saved where `Store.is_verified` (and so `m7b list`, convert and seed) reads it.
    `store` defaults to `Store.from_env()` (M7B_HOME).
    """
    store = store or Store.from_env()
    if isinstance(target, str) and is_converted_dir(folder := Path(target).expanduser()) and folder.is_dir():
        return Verification(verify_converted_folder(folder, store, progress=progress), None)
    release = _release(store, target, manifest, torrent, on_note)
    if not release.in_store:
        return _verify_release(store, release, progress)
    # a store release is read holding its lock shared (as a seed does): `rm` or a fetch refuses at once, naming this
    # verify, instead of removing files mid-read; a verify started while one writes or removes it fails at once
    lock = store.release_lock(release.name)
    with hold(store, lock, f"release {release.name}", shared=True, purpose="verified", role="verify"):
        return _verify_release(store, release, progress)


def _verify_release(store: Store, release: Release, progress: ProgressCallback) -> Verification:
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


def _release(
    store: Store, target: str | Release | None, manifest: Path | None, torrent: Path | None, on_note: NoteCallback
) -> Release:
    """The release to check: resolved from `target` (or the manifest file), with `manifest`/`torrent` overriding."""
    loaded = load_manifest(manifest) if manifest else None
    if target is None:
        if manifest is None:
            raise NotFoundError(
                "nothing to verify: name a release (see `m7b list`), a folder, or a manifest file (manifest)",
                field="manifest",
            )
        target = str(manifest)
    release = release_for(target, store, on_note)
    if loaded is not None:
        release = replace(release, manifest=loaded)
    if torrent is not None:
        release = replace(release, torrent=torrent)
    return release
