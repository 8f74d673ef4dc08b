"""The verification report: findings, the files as they were when checked, and the verdict."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .findings import Finding, Status, exit_code


@dataclass(frozen=True)
class FileRecord:
    path: str
    size: int
    mtime_ns: int
    sha256: str | None = None
    md5: str | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns}
        if self.sha256:
            doc["sha256"] = self.sha256
        if self.md5:
            doc["md5"] = self.md5
        return doc


@dataclass
class VerifyReport:
    kind: str  # "release" or "converted"
    root: Path
    name: str | None
    verdict: Status
    findings: list[Finding]
    files: list[FileRecord]
    bytes_read: int = 0
    seconds: float = 0.0
    torrent: dict[str, Any] | None = None
    license: list[dict[str, str]] = field(default_factory=list)
    checkpoint: dict[str, Any] | None = None
    bound_to_magnet: bool = False
    bound_to_publisher: bool = False
    signature: dict[str, Any] | None = None  # who signed and what the signature covers (verify/signature.py)
    checked_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    @property
    def exit_code(self) -> int:
        return exit_code(self.verdict)

    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.status not in (Status.OK, Status.NOTE)]

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "root": str(self.root),
            "verdict": str(self.verdict),
            "exit_code": self.exit_code,
            "checked_at": self.checked_at,
            "bound_to_magnet": self.bound_to_magnet,
            "bound_to_publisher": self.bound_to_publisher,
            "bytes_read": self.bytes_read,
            "seconds": round(self.seconds, 3),
            "files": [f.to_json() for f in self.files],
            "torrent": self.torrent,
            "license": self.license,
            "checkpoint": self.checkpoint,
            "signature": self.signature,
            "findings": [f.to_json() for f in self.findings],
        }
