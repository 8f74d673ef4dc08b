"""What a check found: one record per fact checked, and the verdict (and exit code) they add up to."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from m7b.errors import InvalidInputError, M7bError, MismatchError, NotFoundError, UnsafeError, UnvouchedError


class Status(enum.StrEnum):
    OK = "ok"
    NOTE = "note"  # worth telling, not a failure (an extra file, evidence that is absent)
    # nothing vouches for the data (a converted folder with no record in the store): not "ok", exit 5 as a
    # mismatch, though nothing was found to differ
    UNVOUCHED = "unvouched"
    INVALID = "invalid"
    MISMATCH = "mismatch"
    MISSING = "missing"
    UNSAFE = "unsafe"


# The verdict is the worst status found, in this order: data that contradicts its proof (or does not parse)
# outranks data that is absent (pieces that cannot be checked because bytes are missing count as missing).
_SEVERITY = [Status.OK, Status.NOTE, Status.UNVOUCHED, Status.MISSING, Status.INVALID, Status.MISMATCH, Status.UNSAFE]
# The one table of a failing status <-> the error that carries it (and so its exit code). An error of another
# class found while checking is reported as invalid input. A subclass comes before its base (status_for takes the
# first match).
ERRORS: dict[Status, type[M7bError]] = {
    Status.UNVOUCHED: UnvouchedError,
    Status.INVALID: InvalidInputError,
    Status.MISMATCH: MismatchError,
    Status.MISSING: NotFoundError,
    Status.UNSAFE: UnsafeError,
}
EXIT_CODES: dict[Status, int] = {Status.OK: 0, Status.NOTE: 0} | {s: e.exit_code for s, e in ERRORS.items()}


@dataclass(frozen=True)
class Finding:
    """One checked fact: which check, its outcome, a sentence for a person, and details for scripts."""

    check: str
    status: Status
    message: str
    path: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"check": self.check, "status": str(self.status), "message": self.message}
        if self.path is not None:
            doc["path"] = self.path
        if self.detail:
            doc["detail"] = self.detail
        return doc


def verdict(findings: Iterable[Finding]) -> Status:
    worst = Status.OK
    for f in findings:
        if _SEVERITY.index(f.status) > _SEVERITY.index(worst):
            worst = f.status
    return Status.OK if worst == Status.NOTE else worst


def exit_code(status: Status) -> int:
    return EXIT_CODES[status]


def status_for(exc: M7bError) -> Status:
    """The status of a finding that is this error; an error of a class `ERRORS` does not name is invalid input."""
    return next((s for s, cls in ERRORS.items() if isinstance(exc, cls)), Status.INVALID)


def error_for(status: Status) -> type[M7bError]:
    """The error that reports a failing status (and carries its exit code)."""
    return ERRORS[status]
