"""`SHA256SUMS`: the record of a converted folder, in `sha256sum` format, written last (its presence means done)."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from pathlib import Path

from m7b.errors import InvalidInputError, NotFoundError
from m7b.paths import path_problem
from m7b.progress import ProgressCallback, ignore_progress
from m7b.store import CONVERTED_RECORD

from .check import disk_files
from .digest import FileDigestLane, ReadItem, read_stream
from .findings import Finding, Status, verdict
from .report import FileRecord, VerifyReport

_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


def format_sums(digests: Mapping[str, str]) -> str:
    return "".join(f"{digests[name]}  {name}\n" for name in sorted(digests))


def parse_sums(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise NotFoundError(f"{path} not found: the conversion did not finish; convert again")
    out: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = _LINE.match(line)
        if not m or path_problem(m.group(2)) is not None:
            raise InvalidInputError(f"{path}: line {number} is not '<sha256>  <file>' ({line!r})")
        out[m.group(2)] = m.group(1)
    return out


def is_converted_dir(root: Path) -> bool:
    return (Path(root) / CONVERTED_RECORD).is_file()


def verify_converted(
    root: Path, *, name: str | None = None, progress: ProgressCallback = ignore_progress
) -> VerifyReport:
    """Check every file of a converted folder against its SHA256SUMS (one read pass)."""
    started = time.monotonic()
    root = Path(root)
    recorded = parse_sums(root / CONVERTED_RECORD)
    on_disk = [rel for rel in disk_files(root) if rel != CONVERTED_RECORD]
    names = list(recorded) + [rel for rel in on_disk if rel not in recorded]
    lane = FileDigestLane("sha256")
    found = read_stream([ReadItem(rel, root / rel) for rel in names], [lane], progress=progress)
    findings: list[Finding] = []
    for rel, expected in recorded.items():
        seen = found[rel]
        if seen.size is None:
            findings.append(
                Finding(
                    "sums", Status.MISSING, f"{rel}: {seen.error}; {CONVERTED_RECORD} lists it — convert again", rel
                )
            )
        elif lane.digests.get(rel) != expected:
            findings.append(
                Finding(
                    "sums",
                    Status.MISMATCH,
                    f"{rel}: sha256 {lane.digests.get(rel)}, "
                    f"{CONVERTED_RECORD} records {expected}; the file changed since conversion — "
                    "convert again",
                    rel,
                    {"expected": expected, "found": lane.digests.get(rel)},
                )
            )
        else:
            findings.append(Finding("sums", Status.OK, f"{rel}: sha256 as recorded", rel))
    for rel in on_disk:
        if rel not in recorded:
            findings.append(
                Finding(
                    "sums",
                    Status.MISMATCH,
                    f"{rel}: not listed in {CONVERTED_RECORD}; a converted folder holds only what convert wrote",
                    rel,
                )
            )
    files = [
        FileRecord(rel, r.size, r.mtime_ns or 0, lane.digests.get(rel))
        for rel, r in found.items()
        if r.size is not None
    ]
    return VerifyReport(
        kind="converted",
        root=root,
        name=name,
        verdict=verdict(findings),
        findings=findings,
        files=files,
        bytes_read=sum(f.size for f in files),
        seconds=time.monotonic() - started,
    )
