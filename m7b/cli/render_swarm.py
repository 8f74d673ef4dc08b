"""Live displays of the swarm commands (fetch, seed): transfer figures, connected seeds and peers, each tracker's
and web seed's status, elapsed time; sizes in binary units (m7b.sizes).

On a terminal the display is redrawn in place (rich Live). Anywhere else (a pipe, a log file, a service's
journal) it is one compact line per interval, so a log reads as a history, never as a scroll of redrawn tables.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import TaskID
from rich.table import Table
from rich.text import Text

from m7b.progress import ProgressCallback, ProgressEvent
from m7b.sizes import format_bytes, format_rate

from .render import emit_json, err, format_elapsed, out, progress_display

_STYLE = {"working": "green", "error": "red", "not contacted": "yellow"}


def source_detail(kind: str, source: Mapping[str, Any]) -> str:
    """What a working source gave (peers in a tracker's reply, bytes from a web seed), else its message."""
    if source["status"] != "working":
        return source.get("message", "")
    return f"{source['peers']} peers" if kind == "tracker" else format_bytes(source["downloaded"])


def source_words(kind: str, source: Mapping[str, Any]) -> str:
    """One tracker's or web seed's status: `tracker URL: working (3 peers)`, `web seed URL: error: answered …`."""
    status, detail = source["status"], source_detail(kind, source)
    if not detail:
        return f"{kind} {source['url']}: {status}"
    return (
        f"{kind} {source['url']}: {status} ({detail})"
        if status == "working"
        else f"{kind} {source['url']}: {status}: {detail}"
    )


def sources_words(trackers: Sequence[Mapping[str, Any]], web_seeds: Sequence[Mapping[str, Any]]) -> list[str]:
    return [source_words("tracker", t) for t in trackers] + [source_words("web seed", w) for w in web_seeds]


def _sources_table(trackers: Sequence[Mapping[str, Any]], web_seeds: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column("source")
    table.add_column("url", overflow="fold")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    for kind, items in (("tracker", trackers), ("web seed", web_seeds)):
        for s in items:
            status = Text(s["status"], style=_STYLE.get(s["status"], ""))
            table.add_row(kind, Text(s["url"]), status, Text(source_detail(kind, s)))
    if not trackers and not web_seeds:
        table.add_row("", "no trackers or web seeds (DHT and known peers only)", "", "")
    return table


def fetch_line(event: ProgressEvent) -> str:
    """The compact line of a fetch: phase, amount, rate, seeds/peers, every source's status, elapsed time."""
    extra = event.extra
    parts = [event.phase]
    if event.total:
        parts.append(f"{format_bytes(event.done)}/{format_bytes(event.total)} ({event.done / event.total:.0%})")
    if "rate" in extra:
        parts.append(f"at {format_rate(extra['rate'])}")
    words = [" ".join(parts)]
    if "peers" in extra:
        words.append(f"{extra['seeds']} seeds / {extra['peers']} peers connected")
    words += sources_words(extra.get("trackers", []), extra.get("web_seeds", []))
    if "elapsed" in extra:
        words.append(f"elapsed {format_elapsed(extra['elapsed'])}")
    return " · ".join(words)


@contextmanager
def fetch_display(enabled: bool = True, interval: float = 5.0, console: Console = err) -> Iterator[ProgressCallback]:
    """A ProgressCallback for fetch: a live bar with the sources beneath it on a terminal, else a compact line
    every `interval` seconds, on each change of phase, and at the end."""
    if not enabled:
        yield lambda event: None
        return
    if not console.is_terminal:
        last: dict[str, Any] = {"at": float("-inf"), "phase": None, "unshown": None}

        def on_line(event: ProgressEvent) -> None:
            now = time.monotonic()
            if event.phase != last["phase"] or event.phase == "done" or now - last["at"] >= interval:
                console.print(fetch_line(event), highlight=False, markup=False, soft_wrap=True)
                last.update(at=now, phase=event.phase, unshown=None)
            else:
                last["unshown"] = event

        try:
            yield on_line
        finally:
            if last["unshown"] is not None:  # the state the fetch stopped in (an error, an interrupt)
                console.print(fetch_line(last["unshown"]), highlight=False, markup=False, soft_wrap=True)
        return
    bars = progress_display(console)
    task: list[TaskID] = []
    view: dict[str, Any] = {"sources": Table()}

    def on_event(event: ProgressEvent) -> None:
        extra = event.extra
        item = event.item
        if "peers" in extra:
            item += f" · {extra['seeds']} seeds / {extra['peers']} peers · {format_elapsed(extra['elapsed'])}"
        if not task:
            task.append(bars.add_task(event.phase, total=event.total, item=item, unit=event.unit))
        bars.update(task[0], description=event.phase, completed=event.done, total=event.total, item=item)
        if "trackers" in extra:
            view["sources"] = _sources_table(extra["trackers"], extra["web_seeds"])

    with Live(get_renderable=lambda: Group(bars, view["sources"]), console=console, refresh_per_second=4):
        yield on_event


@contextmanager
def fetch_json_lines(interval: float = 1.0) -> Iterator[ProgressCallback]:
    """Fetch progress as JSON lines on stdout: at most one per `interval`, every "done", and the last state at the
    end when it was not sent yet (so the state a fetch failed in is on record before its error document)."""
    last: dict[str, Any] = {"at": float("-inf"), "unsent": None}

    def send(event: ProgressEvent) -> None:
        emit_json({"event": "progress", "phase": event.phase, "done": event.done, "total": event.total, **event.extra})

    def on_event(event: ProgressEvent) -> None:
        now = time.monotonic()
        if event.phase == "done" or now - last["at"] >= interval:
            send(event)
            last.update(at=now, unsent=None)
        else:
            last["unsent"] = event

    try:
        yield on_event
    finally:
        if last["unsent"] is not None:
            send(last["unsent"])


def fetch_progress(json_out: bool) -> AbstractContextManager[ProgressCallback]:
    """The fetch command's progress: JSON lines, or the human display."""
    return fetch_json_lines() if json_out else fetch_display()


def seed_line(status: Mapping[str, Any], elapsed: float) -> str:
    """The compact line of one served release."""
    words = [
        f"{status['name']} {status['state']}",
        f"{status['seeds']} seeds / {status['peers']} peers connected",
        f"uploaded {format_bytes(status['uploaded'])} at {format_rate(status['upload_rate'])}",
        *sources_words(status["trackers"], []),
        f"elapsed {format_elapsed(elapsed)}",
    ]
    return " · ".join(words)


def seed_table(statuses: Sequence[Mapping[str, Any]], listen_port: int, elapsed: float) -> Table:
    table = Table(
        title=f"m7b seed — listening on port {listen_port} — elapsed {format_elapsed(elapsed)}", title_justify="left"
    )
    for col in ("release", "state", "seeds / peers", "uploaded", "rate", "trackers"):
        table.add_column(col, overflow="fold")
    for s in statuses:
        trackers = "\n".join(source_words("tracker", t).removeprefix("tracker ") for t in s["trackers"]) or "none"
        table.add_row(
            Text(s["name"]),
            s["state"],
            f"{s['seeds']} / {s['peers']}",
            format_bytes(s["uploaded"]),
            format_rate(s["upload_rate"]),
            Text(trackers),
        )
    return table


class SeedDisplay:
    """`m7b seed`'s display: one live table on a terminal, else one compact line per release per report."""

    def __init__(self, console: Console = out) -> None:
        self.console = console
        self.live: Live | None = None

    def __enter__(self) -> SeedDisplay:
        if self.console.is_terminal:
            self.live = Live(Table(), console=self.console, refresh_per_second=2)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def note(self, text: str) -> None:
        """A message printed once (a refusal), above the live table or in the log."""
        (self.live.console if self.live else err).print(text, highlight=False)

    def report(self, statuses: Sequence[Mapping[str, Any]], listen_port: int, elapsed: float) -> None:
        if self.live is not None:
            self.live.update(seed_table(statuses, listen_port, elapsed), refresh=True)
            return
        for s in statuses:
            self.console.print(seed_line(s, elapsed), highlight=False, markup=False, soft_wrap=True)
