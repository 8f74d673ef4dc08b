"""The store: where releases, torrents, resume data, converted outputs and reports live.

`M7B_HOME` (default: `$XDG_DATA_HOME/m7b`, i.e. `~/.local/share/m7b`):

    releases/<name>/                  the release files as the torrent lays them out
    releases/.<name>.partial/         a download until every piece has passed its hash (then renamed)
    releases/.<name>.incomplete       present while an existing release folder is being repaired in place
    torrents/<infohash>.torrent       metadata, once resolved
    resume/<infohash>.fastresume      libtorrent resume data
    converted/<name>/{native,hf}/     safetensors outputs, each with its SHA256SUMS
    reports/<name>.json               the last verification report
    manifests/*.toml                  manifests of the user's own releases
"""

from __future__ import annotations

import enum
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m7b.manifests.schema import Manifest

CONVERTED_RECORD = "SHA256SUMS"
LAYOUTS = ("native", "hf")


class ReleaseState(enum.StrEnum):
    ABSENT = "absent"
    PARTIAL = "partial"
    DOWNLOADED = "downloaded"
    VERIFIED = "verified"
    CONVERTED = "converted"


def partial_dir_for(folder: Path) -> Path:
    """Where a download into `folder` (in the store or a --dest) lives until every piece has passed its hash."""
    return folder.parent / f".{folder.name}.partial"


def incomplete_marker_for(folder: Path) -> Path:
    """Present while the existing release `folder` is being repaired in place."""
    return folder.parent / f".{folder.name}.incomplete"


def file_state(root: Path, rel: str) -> dict[str, object]:
    """What m7b records of a file it checked, to trust it later while unchanged: path, size, mtime_ns."""
    st = (root / rel).stat()
    return {"path": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def unchanged_since(root: Path, recorded: dict[str, Any]) -> bool:
    """True when the file a record (`file_state`, or a verify report's file entry) names still has its size and
    mtime; False when it changed, is gone, or the record is malformed."""
    try:
        st = (root / recorded["path"]).stat()
    except (OSError, KeyError, TypeError, ValueError):
        return False
    return st.st_size == recorded.get("size") and st.st_mtime_ns == recorded.get("mtime_ns")


@dataclass(frozen=True)
class Store:
    home: Path

    @classmethod
    def from_env(cls) -> Store:
        if os.environ.get("M7B_HOME"):
            return cls(Path(os.environ["M7B_HOME"]).expanduser())
        data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return cls(Path(data).expanduser() / "m7b")

    @property
    def releases_dir(self) -> Path:
        return self.home / "releases"

    @property
    def torrents_dir(self) -> Path:
        return self.home / "torrents"

    @property
    def resume_dir(self) -> Path:
        return self.home / "resume"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def manifests_dir(self) -> Path:
        return self.home / "manifests"

    def release_dir(self, name: str) -> Path:
        return self.releases_dir / name

    def incomplete_marker(self, name: str) -> Path:
        return incomplete_marker_for(self.release_dir(name))

    def partial_dir(self, name: str) -> Path:
        """Where a download lives until every piece has passed its hash."""
        return partial_dir_for(self.release_dir(name))

    def completion_path(self, info_hash: str) -> Path:
        """m7b's record of a completed, hash-checked download (files with their sizes and mtimes)."""
        return self.resume_dir / f"{info_hash.lower()}.complete.json"

    def torrent_path(self, info_hash: str) -> Path:
        return self.torrents_dir / f"{info_hash.lower()}.torrent"

    def resume_path(self, info_hash: str) -> Path:
        return self.resume_dir / f"{info_hash.lower()}.fastresume"

    def converted_dir(self, name: str, layout: str) -> Path:
        return self.home / "converted" / name / layout

    def report_path(self, name: str) -> Path:
        return self.reports_dir / f"{name}.json"

    def converted_layouts(self, name: str) -> list[str]:
        """Layouts whose conversion finished (its record of output hashes exists)."""
        return [lay for lay in LAYOUTS if (self.converted_dir(name, lay) / CONVERTED_RECORD).is_file()]

    def is_verified(self, name: str) -> bool:
        """A report with verdict "ok" whose files are unchanged (same size and mtime) since it was written."""
        try:
            report = json.loads(self.report_path(name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        if not isinstance(report, dict) or report.get("verdict") != "ok" or not report.get("files"):
            return False
        root = self.release_dir(name)
        return all(isinstance(e, dict) and unchanged_since(root, e) for e in report["files"])

    def state(self, manifest: Manifest) -> ReleaseState:
        root = self.release_dir(manifest.name)
        if not root.is_dir():
            return ReleaseState.PARTIAL if self.partial_dir(manifest.name).is_dir() else ReleaseState.ABSENT
        if self.incomplete_marker(manifest.name).exists():
            return ReleaseState.PARTIAL
        for f in manifest.files:
            path = root / f.path
            if not path.is_file() or (f.size is not None and path.stat().st_size != f.size):
                return ReleaseState.PARTIAL
        if not any(root.iterdir()):
            return ReleaseState.PARTIAL
        if not self.is_verified(manifest.name):
            return ReleaseState.DOWNLOADED
        if self.converted_layouts(manifest.name):
            return ReleaseState.CONVERTED
        return ReleaseState.VERIFIED
