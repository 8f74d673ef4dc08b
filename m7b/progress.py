"""Progress events: library code reports through a callback, the CLI renders them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a long operation.

    `phase` names the stage (e.g. "hashing", "writing"), `done`/`total` count its units (bytes unless
    `unit` says otherwise), `item` names the file or tensor being worked on.
    """

    phase: str
    done: int
    total: int | None = None
    item: str = ""
    unit: str = "B"
    extra: dict[str, Any] = field(default_factory=dict)


ProgressCallback = Callable[[ProgressEvent], None]


def ignore_progress(event: ProgressEvent) -> None:
    """The default callback: library calls made without a renderer report nowhere."""
