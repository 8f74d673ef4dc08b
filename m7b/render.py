"""Rendering for the CLI: rich progress bars and tables on stderr/stdout, or JSON for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from m7b.progress import ProgressCallback, ProgressEvent

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def emit_json(document: Any) -> None:
    """One JSON document (or one JSON line of a stream) on stdout."""
    sys.stdout.write(json.dumps(document, default=str) + "\n")
    sys.stdout.flush()


@contextmanager
def progress_bars(enabled: bool = True) -> Iterator[ProgressCallback]:
    """A ProgressCallback that draws one bar per phase on stderr (nothing when disabled or not a tty)."""
    if not enabled:
        yield lambda event: None
        return
    bars = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[item]}"),
        console=err,
        transient=False,
    )
    tasks: dict[str, TaskID] = {}

    def on_event(event: ProgressEvent) -> None:
        if event.phase not in tasks:
            tasks[event.phase] = bars.add_task(event.phase, total=event.total, item=event.item)
        bars.update(tasks[event.phase], completed=event.done, total=event.total, item=event.item)

    with bars:
        yield on_event
