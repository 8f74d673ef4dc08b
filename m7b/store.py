"""The store: where releases, torrents, resume data, converted outputs and reports live.

`M7B_HOME` (default: `$XDG_DATA_HOME/m7b`, i.e. `~/.local/share/m7b`):

    releases/<name>/                  the release files as the torrent lays them out
    releases/.<name>.partial/         a download until every piece has passed its hash (then renamed)
    releases/.<name>.incomplete       present while an existing release folder is being repaired in place
    releases/.<name>.json             the release record: {"name": <name>, "info_hash": <hex>} (written by fetch;
                                      how a release fetched without a manifest is known by name)
    torrents/<infohash>.torrent       metadata, once resolved
    torrents/<infohash>.sig           the release's OMS signature, kept with its torrent (fetch, `release sign`)
    resume/<infohash>.fastresume      libtorrent resume data of the store's copy
    resume/<infohash>-<key>.fastresume   the same for a copy in another folder (`--dest`; key: of its resolved path)
    dht/state                         the DHT's routing table and node id, so the next session starts knowing nodes
    converted/<name>/{native,hf}/     safetensors outputs, each with its SHA256SUMS
    converted-records/<key>.json      m7b's own record of each output convert wrote (its files' sha256, its source),
                                      keyed by the output folder's resolved path: what `verify` trusts, not SHA256SUMS
    cache/{compile,kernels,quantized}/  compiled decode steps, m7b's CPU kernels, quantized weights (`run --weights`)
    reports/<name>.json               the last verification report
    manifests/*.toml                  manifests of the user's own releases
    locks/releases/<name>.lock        held (flock) by the command writing a release; holds its pid and command
    locks/converted/<name>/<layout>.lock   the same for a converted output
"""

from __future__ import annotations

import enum
import errno
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m7b.atomic import write_bytes, write_text
from m7b.errors import StorageError
from m7b.manifests.schema import Manifest
from m7b.owned import own_dir
from m7b.paths import check_path_length, path_problem, safe_name

CONVERTED_RECORD = "SHA256SUMS"
# `m7b convert --to gguf --type T` writes converted/NAME/gguf-T (verify/gguf_out.py)
GGUF_LAYOUTS = ("gguf-bf16", "gguf-f16", "gguf-q8_0", "gguf-q4_0")
LAYOUTS = ("native", "hf", *GGUF_LAYOUTS)


class ReleaseState(enum.StrEnum):
    ABSENT = "absent"
    PARTIAL = "partial"
    DOWNLOADED = "downloaded"
    VERIFIED = "verified"
    CONVERTED = "converted"


def partial_dir_for(folder: Path) -> Path:
    """Where a download into `folder` (in the store or a --dest) lives until every piece has passed its hash."""
    return folder.parent / f".{folder.name}.partial"


def folder_key(folder: Path | None) -> str:
    """What tells apart the resume data of two copies of one torrent: "" for the store's own copy, else "-" and 16
    hex digits of the sha256 of the folder's resolved path."""
    if folder is None:
        return ""
    return "-" + hashlib.sha256(str(Path(folder).resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:16]


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


def release_name(name: str) -> str:
    """`name` unchanged when it is a plain folder name (the one path rule, m7b.paths); else UnsafeError. Every
    store path built from a release name goes through this, so no name can reach outside the store."""
    return safe_name(name, "release name", "the store")


@dataclass(frozen=True)
class Store:
    home: Path

    @classmethod
    def from_env(cls) -> Store:
        """The store M7B_HOME names (default: $XDG_DATA_HOME/m7b); refused at once if that is not a folder."""
        if os.environ.get("M7B_HOME"):
            check_path_length(os.environ["M7B_HOME"], "the store (M7B_HOME)")
            store = cls(Path(os.environ["M7B_HOME"]).expanduser())
        else:
            data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
            store = cls(Path(data).expanduser() / "m7b")
        if store.home.exists() and not store.home.is_dir():
            raise StorageError(
                f"the store {store.home} (M7B_HOME) is not a folder: point M7B_HOME at a folder you can write to "
                "(it is created if missing)"
            )
        return store

    def ensure_dir(self, path: Path) -> Path:
        """Create `path` (a folder inside the store) with its parents; the disk's refusal is a StorageError. Every
        element below the store's home must be a real folder: a symlink is LinkInTheWayError (m7b.owned), so
        nothing m7b writes in the store lands outside it."""
        try:
            own_dir(path, self.home)
        except OSError as exc:
            why = {
                errno.ENOTDIR: "a part of that path is a file, not a folder",
                errno.ENOENT: "that place does not allow new folders",
                errno.EACCES: "permission denied",
                errno.EPERM: "permission denied",
                errno.EROFS: "the file system is read-only",
                errno.ENOSPC: "the disk is full",
            }.get(exc.errno or 0, exc.strerror or str(exc))
            raise StorageError(
                f"could not create {path} in the store {self.home}: {why}; point M7B_HOME at a folder you can "
                "write to (it is created if missing)"
            ) from exc
        if not path.is_dir():
            raise StorageError(f"{path} in the store {self.home} is not a folder: move it away and rerun")
        return path

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
    def compile_cache_dir(self) -> Path:
        """Compiled decode steps, one folder per model shape, dtype, device, torch version and cache size."""
        return self.home / "cache" / "compile"

    @property
    def quant_cache_dir(self) -> Path:
        """Quantized weights (`m7b run --weights`), one folder per release, scheme and source sha256."""
        return self.home / "cache" / "quantized"

    @property
    def kernel_cache_dir(self) -> Path:
        """Built CPU kernels (m7b's bf16 matrix-vector product), one folder per source, compiler and machine."""
        return self.home / "cache" / "kernels"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def manifests_dir(self) -> Path:
        return self.home / "manifests"

    def release_dir(self, name: str) -> Path:
        return self.releases_dir / release_name(name)

    def incomplete_marker(self, name: str) -> Path:
        return incomplete_marker_for(self.release_dir(name))

    def partial_dir(self, name: str) -> Path:
        """Where a download lives until every piece has passed its hash."""
        return partial_dir_for(self.release_dir(name))

    def completion_path(self, info_hash: str, folder: Path | None = None) -> Path:
        """m7b's record of a completed, hash-checked download (files with their sizes and mtimes) in `folder`
        (None: the store's own copy)."""
        return self.resume_dir / f"{info_hash.lower()}{folder_key(folder)}.complete.json"

    def torrent_path(self, info_hash: str) -> Path:
        return self.torrents_dir / f"{info_hash.lower()}.torrent"

    def signature_path(self, info_hash: str) -> Path:
        """The release's signature (OMS), kept beside its torrent."""
        return self.torrents_dir / f"{info_hash.lower()}.sig"

    def save_signature(self, info_hash: str, data: bytes) -> Path:
        """Keep a release's signature beside its torrent (`signature_path`), never through a link in the store."""
        path = self.signature_path(info_hash)
        self.ensure_dir(path.parent)
        write_bytes(path, data)
        return path

    def resume_path(self, info_hash: str, folder: Path | None = None) -> Path:
        """libtorrent's resume data of the copy in `folder` (None: the store's own copy)."""
        return self.resume_dir / f"{info_hash.lower()}{folder_key(folder)}.fastresume"

    @property
    def dht_state_path(self) -> Path:
        return self.home / "dht" / "state"

    def converted_root(self, name: str) -> Path:
        """Every converted output of release `name` (one folder per layout)."""
        return self.home / "converted" / release_name(name)

    def converted_dir(self, name: str, layout: str) -> Path:
        return self.converted_root(name) / safe_name(layout, "layout", "the store")

    def release_lock(self, name: str) -> Path:
        """The lock file held by the one command that may write release `name` (and its resume data)."""
        return self.home / "locks" / "releases" / f"{release_name(name)}.lock"

    def converted_lock(self, name: str, layout: str) -> Path:
        return (
            self.home / "locks" / "converted" / release_name(name) / f"{safe_name(layout, 'layout', 'the store')}.lock"
        )

    def report_path(self, name: str) -> Path:
        return self.reports_dir / f"{release_name(name)}.json"

    def save_report(self, name: str, document: dict[str, Any]) -> Path:
        """Write the verification report of store release `name` (what `is_verified` reads back)."""
        path = self.report_path(name)
        self.ensure_dir(path.parent)
        write_text(path, json.dumps({**document, "report_path": str(path)}, indent=2, default=str) + "\n")
        return path

    def converted_record_path(self, out: Path) -> Path:
        """m7b's own record of the converted output in folder `out` (written by convert: its files' sha256 and its
        source), named by the folder's resolved path, hashed, so no path from outside names a store file."""
        key = hashlib.sha256(str(Path(out).resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:40]
        return self.home / "converted-records" / f"{key}.json"

    def save_converted_record(self, out: Path, document: dict[str, Any]) -> Path:
        path = self.converted_record_path(out)
        self.ensure_dir(path.parent)
        write_text(path, json.dumps({**document, "out": str(Path(out).resolve())}, indent=1, sort_keys=True) + "\n")
        return path

    def converted_record(self, out: Path) -> dict[str, Any] | None:
        """The record convert wrote for folder `out`, or None (none, unreadable, or naming another folder)."""
        try:
            doc = json.loads(self.converted_record_path(out).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        ok = isinstance(doc, dict) and doc.get("out") == str(Path(out).resolve())
        return doc if ok and isinstance(doc.get("files"), dict) else None

    def release_record_path(self, name: str) -> Path:
        return self.releases_dir / f".{release_name(name)}.json"

    def record_release(self, name: str, info_hash: str) -> None:
        """Remember which torrent (by info-hash) the store release `name` is, so it is known by name."""
        self.ensure_dir(self.releases_dir)
        doc = {"name": name, "info_hash": info_hash.lower()}
        write_text(self.release_record_path(name), json.dumps(doc, indent=1) + "\n")

    def recorded_releases(self) -> dict[str, str]:
        """Release name -> info-hash for every release record in the store (unreadable records are skipped)."""
        found: dict[str, str] = {}
        if not self.releases_dir.is_dir():
            return found
        for path in sorted(self.releases_dir.glob(".*.json")):
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            ok = isinstance(doc, dict) and isinstance(doc.get("name"), str) and isinstance(doc.get("info_hash"), str)
            # the hash names store files (torrents/IH.torrent): only a v1 or v2 info-hash in hex, nothing path-like
            ok = ok and re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", doc["info_hash"]) is not None
            if ok and path.name == f".{doc['name']}.json" and path_problem(doc["name"]) is None:
                found[doc["name"]] = doc["info_hash"]
        return found

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
        return self.state_of(manifest.name, manifest)

    def state_of(self, name: str, manifest: Manifest | None = None) -> ReleaseState:
        """The state of store release `name`; without a manifest, its files are not checked against one."""
        root = self.release_dir(name)
        if not root.is_dir():
            return ReleaseState.PARTIAL if self.partial_dir(name).is_dir() else ReleaseState.ABSENT
        if self.incomplete_marker(name).exists():
            return ReleaseState.PARTIAL
        for f in manifest.files if manifest else ():
            path = root / f.path
            if not path.is_file() or (f.size is not None and path.stat().st_size != f.size):
                return ReleaseState.PARTIAL
        if not any(root.iterdir()):
            return ReleaseState.PARTIAL
        if not self.is_verified(name):
            return ReleaseState.DOWNLOADED
        if self.converted_layouts(name):
            return ReleaseState.CONVERTED
        return ReleaseState.VERIFIED
