"""Rendering for the CLI: rich progress bars and tables on stderr/stdout, or JSON for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from m7b.locks import LockHolder
from m7b.progress import ProgressCallback, ProgressEvent
from m7b.sizes import format_bytes, format_rate

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def format_elapsed(seconds: float) -> str:
    """Elapsed time for people: `0:07`, `12:34`, `1:02:03`."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def emit_json(document: Any) -> None:
    """One JSON document (or one JSON line of a stream) on stdout."""
    sys.stdout.write(json.dumps(document, default=str) + "\n")
    sys.stdout.flush()


def show(document: dict[str, Any], json_out: bool, human: Callable[[dict[str, Any]], None]) -> None:
    """The one output helper: a command's result as one JSON document, or drawn for people by `human`."""
    if json_out:
        emit_json(document)
    else:
        human(document)


class AmountColumn(ProgressColumn):
    """Bytes and byte rate (binary units, m7b.sizes) for byte phases; `done/total unit` and a rate for others."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "B")
        if unit == "B":
            total = f"/{format_bytes(task.total)}" if task.total is not None else ""
            rate = f" {format_rate(task.speed)}" if task.speed else ""
            return Text(f"{format_bytes(task.completed)}{total}{rate}", style="progress.download")
        rate = f" {task.speed:.1f} {unit}/s" if task.speed else ""
        total = f"/{task.total:g}" if task.total is not None else ""
        return Text(f"{task.completed:g}{total} {unit}{rate}", style="progress.download")


def progress_display(console: Console) -> Progress:
    """The one bar layout of every command: phase, bar, bytes and rate (or units), time left, the item."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        AmountColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[item]}"),
        console=console,
        transient=False,
    )


@contextmanager
def progress_bars(enabled: bool = True) -> Iterator[ProgressCallback]:
    """A ProgressCallback that draws one bar per phase on stderr (nothing when disabled). (Fetch and seed have their
    own displays: m7b.cli.render_swarm.)"""
    if not enabled:
        yield lambda event: None
        return
    bars = progress_display(err)
    tasks: dict[str, TaskID] = {}

    def on_event(event: ProgressEvent) -> None:
        if event.phase not in tasks:
            tasks[event.phase] = bars.add_task(event.phase, total=event.total, item=event.item, unit=event.unit)
        bars.update(tasks[event.phase], completed=event.done, total=event.total, item=event.item)

    with bars:
        yield on_event


def report_lock_wait(holder: LockHolder, json_out: bool) -> None:
    """What a command prints while another one holds what it wants to write."""
    if json_out:
        emit_json({"event": "waiting", "for": holder.what, "pid": holder.pid, "command": holder.command})
    else:
        err.print(f"waiting: {holder.what} is being written by {holder} (--no-wait fails at once)", highlight=False)
