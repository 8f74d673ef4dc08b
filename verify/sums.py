"""`SHA256SUMS`: the record of a converted folder, in `sha256sum` format, written last (its presence means done)."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from pathlib import Path

from m7b.errors import InvalidInputError, NotFoundError
from m7b.paths import length_problem, path_problem
from m7b.progress import ProgressCallback, ignore_progress
from m7b.store import CONVERTED_RECORD

from .check import disk_files
from .digest import FileDigestLane, ReadItem, read_stream
from .findings import Finding, Status, verdict
from .provenance import CONVERTED_SIGNATURE, NOT_IN_SUMS
from .report import FileRecord, VerifyReport

_LINE = re.compile(r"([0-9a-f]{64}) [ *](.+)")
# A converted folder holds a few files (native: 4; Mixtral 8x22B in the Hugging Face layout: about 70), so its
# record is a few KB; beyond these it is no record m7b wrote, refused unread (exit 4).
MAX_SUMS_BYTES = 1 << 20
MAX_SUMS_LINES = 10_000


def format_sums(digests: Mapping[str, str]) -> str:
    return "".join(f"{digests[name]}  {name}\n" for name in sorted(digests))


def parse_sums(path: Path) -> dict[str, str]:
    """File -> sha256 from a SHA256SUMS, read in one linear pass within the bounds above."""
    if not path.is_file():
        raise NotFoundError(f"{path} not found: the conversion did not finish; convert again")
    with open(path, "rb") as fh:
        data = fh.read(MAX_SUMS_BYTES + 1)
    if len(data) > MAX_SUMS_BYTES:
        raise InvalidInputError(
            f"{path}: over {MAX_SUMS_BYTES:,} bytes; the record convert writes is a few KB: convert again"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"{path}: not UTF-8 text (byte {exc.start:,} is {data[exc.start]:#04x}); convert writes "
            "'<sha256>  <file>' lines in UTF-8: convert again"
        ) from exc
    lines = text.splitlines()
    if len(lines) > MAX_SUMS_LINES:
        raise InvalidInputError(
            f"{path}: {len(lines):,} lines, over the {MAX_SUMS_LINES:,} a converted folder's record may hold: "
            "convert again"
        )
    out: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        m = _LINE.fullmatch(line)
        if not m or path_problem(m.group(2)) is not None or length_problem(m.group(2)) is not None:
            raise InvalidInputError(f"{path}: line {number} is not '<sha256>  <file>' ({line[:200]!r})")
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
    # the provenance is read too (its signature covers it), the signature itself is not a file of the folder
    on_disk = [rel for rel in disk_files(root) if rel not in (CONVERTED_RECORD, CONVERTED_SIGNATURE)]
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
        if rel not in recorded and rel not in NOT_IN_SUMS:
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
