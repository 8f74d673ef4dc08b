"""What each release takes in the store, part by part: the one list `m7b du`, `m7b list` and `m7b rm` share.

A release's parts, by kind:

    release     releases/NAME/, releases/.NAME.partial/, releases/.NAME.incomplete
    converted   converted/NAME/ (every layout), with the store's record of each (converted-records/KEY.json)
    report      reports/NAME.json
    resume      resume/IH.fastresume, resume/IH.complete.json (libtorrent's resume data, m7b's completion record)
    torrent     torrents/IH.torrent
    record      releases/.NAME.json (how a release fetched without a manifest is known by name)

IH is every info-hash the release is known by: the store's record, and its manifest's v1 and v2. Sizes are bytes
on disk (m7b.space.disk_bytes). Lock files are never a release's part: they are never removed (m7b.locks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from m7b.release import release_names
from m7b.space import disk_bytes
from m7b.store import LAYOUTS, Store

KINDS = ("release", "converted", "report", "resume", "torrent", "record")
# how `m7b du` groups the kinds into columns
GROUPS = {
    "release": "release",
    "converted": "converted",
    "resume": "resume_torrent",
    "torrent": "resume_torrent",
    "record": "resume_torrent",
    "report": "reports",
}


@dataclass(frozen=True)
class StorePart:
    kind: str  # one of KINDS
    path: Path
    bytes: int


def info_hashes(store: Store, name: str) -> list[str]:
    """Every info-hash store release `name` is known by (its record's, its manifest's v1 and v2)."""
    manifest = release_names(store).get(name)
    found = [store.recorded_releases().get(name)]
    if manifest is not None:
        found += [manifest.torrent.info_hash_v1, manifest.torrent.info_hash_v2]
    return list(dict.fromkeys(h.lower() for h in found if h))


def release_parts(store: Store, name: str) -> list[StorePart]:
    """The parts of store release `name` that exist, in KINDS order (none for a name the store holds nothing of).
    Every part is a path the Store builds, so nothing outside the store is ever named by a part; a name that is not
    a plain folder name is refused (UnsafeError)."""
    hashes = info_hashes(store, name)
    candidates = [
        ("release", store.release_dir(name)),
        ("release", store.partial_dir(name)),
        ("release", store.incomplete_marker(name)),
        *(("converted", store.converted_record_path(store.converted_dir(name, lay))) for lay in LAYOUTS),
        ("converted", store.converted_root(name)),
        ("report", store.report_path(name)),
        *(("resume", store.resume_path(h)) for h in hashes),
        *(("resume", store.completion_path(h)) for h in hashes),
        *(("torrent", store.torrent_path(h)) for h in hashes),
        *(("torrent", store.signature_path(h)) for h in hashes),  # kept with its torrent, removed with it
        ("record", store.release_record_path(name)),
    ]
    return [StorePart(kind, path, disk_bytes(path)) for kind, path in candidates if path.exists() or path.is_symlink()]


@dataclass(frozen=True)
class ReleaseUsage:
    name: str
    release: int  # bytes of the release's files (and any partial download)
    converted: int
    resume_torrent: int  # resume data, completion record, torrent, release record
    reports: int

    @property
    def total(self) -> int:
        return self.release + self.converted + self.resume_torrent + self.reports


def release_usage(name: str, parts: list[StorePart]) -> ReleaseUsage:
    sums = dict.fromkeys(GROUPS.values(), 0)
    for part in parts:
        sums[GROUPS[part.kind]] += part.bytes
    return ReleaseUsage(name, **sums)


@dataclass(frozen=True)
class StoreUsage:
    home: Path
    releases: list[ReleaseUsage]
    store_bytes: int  # everything under the store's home, releases' parts or not

    @property
    def other(self) -> int:
        """Bytes no release owns: manifests, lock files, leftovers."""
        return max(self.store_bytes - sum(r.total for r in self.releases), 0)


def store_usage(store: Store) -> StoreUsage:
    """Every release that takes any bytes in the store, with its parts grouped as `m7b du` shows them."""
    releases = []
    for name in release_names(store):
        parts = release_parts(store, name)
        if parts:
            releases.append(release_usage(name, parts))
    return StoreUsage(store.home, releases, disk_bytes(store.home))
