"""`m7b fetch` and `m7b seed`: the BitTorrent side."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from m7b.cli import app
from m7b.errors import InvalidInputError
from m7b.progress import ProgressEvent
from m7b.render import emit_json, err, out, progress_bars
from m7b.store import Store

PeerOption = Annotated[list[str] | None, typer.Option("--peer", help="Connect to HOST:PORT (repeatable).")]
ListenOption = Annotated[
    str | None, typer.Option("--listen", help="Listen on HOST:PORT (default 0.0.0.0:6881; port 0 picks a free one).")
]
LoopbackOption = Annotated[
    bool,
    typer.Option(
        "--no-dht", help="No DHT, LSD, UPnP/NAT-PMP or uTP: trackers, web seeds and --peer only (local swarms, tests)."
    ),
]


def parse_rate(text: str | None, option: str) -> int:
    """Bytes per second with an optional K/M/G suffix; 0 or none = unlimited."""
    if not text:
        return 0
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    try:
        if text[-1].lower() in units:
            return int(float(text[:-1]) * units[text[-1].lower()])
        return int(text)
    except ValueError as exc:
        raise InvalidInputError(f"{option} {text!r}: expected bytes per second, e.g. 500K or 20M") from exc


def session_options(listen: str | None, no_dht: bool, **changes: object):
    from m7b.mirror.session import SessionOptions

    options = SessionOptions.loopback(listen=listen or "0.0.0.0:0", **changes) if no_dht else SessionOptions(**changes)
    if listen and not no_dht:
        options = SessionOptions(listen=listen, **changes)
    return options


@contextmanager
def stop_on_signals() -> Iterator[list[bool]]:
    """SIGINT and SIGTERM set a flag the library polls, so it can save resume data and stop cleanly."""
    stop = [False]

    def handler(signum: int, frame: object) -> None:
        stop[0] = True

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@app.command("fetch")
def fetch_command(
    source: Annotated[str, typer.Argument(help="A magnet link, a release name (see `m7b list`) or a .torrent file.")],
    dest: Annotated[Path | None, typer.Option(help="Folder for the release's files (default: the store).")] = None,
    peer: PeerOption = None,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds without metadata or data.")] = 120.0,
    listen: ListenOption = None,
    no_dht: LoopbackOption = False,
    download_limit: Annotated[str | None, typer.Option(help="Max download rate, e.g. 20M.")] = None,
    resume_interval: Annotated[float, typer.Option(help="Seconds between resume-data saves.")] = 5.0,
    json_out: Annotated[bool, typer.Option("--json", help="JSON lines: progress events, then the result.")] = False,
) -> None:
    """Download a release over BitTorrent, checking its metadata against its manifest before any data."""
    from m7b.errors import EXIT_INTERRUPTED
    from m7b.mirror.fetch import fetch, resolve

    options = session_options(listen, no_dht, download_limit=parse_rate(download_limit, "--download-limit"))
    store = Store.from_env()
    target = resolve(source, store)
    last_json = [0.0]

    def json_progress(event: ProgressEvent) -> None:
        import time

        now = time.monotonic()
        if event.phase == "done" or now - last_json[0] >= 1.0:
            last_json[0] = now
            emit_json(
                {"event": "progress", "phase": event.phase, "done": event.done, "total": event.total, **event.extra}
            )

    with stop_on_signals() as stop, progress_bars(enabled=not json_out, single=True) as bars:
        try:
            result = fetch(
                target,
                store=store,
                dest=dest,
                options=options,
                peers=peer or (),
                timeout=timeout,
                resume_interval=resume_interval,
                progress=json_progress if json_out else bars,
                should_stop=lambda: stop[0],
            )
        except KeyboardInterrupt:
            if json_out:
                emit_json({"event": "interrupted", "info_hash": target.info_hash})
            err.print(f"interrupted: resume data saved; rerun `m7b fetch {source}` to continue")
            raise typer.Exit(EXIT_INTERRUPTED) from None
    doc = {
        "event": "done",
        "name": result.name,
        "path": str(result.path),
        "info_hash": result.info_hash,
        "total_size": result.total_size,
        "pieces": result.pieces,
        "downloaded_bytes": result.downloaded_bytes,
        "pieces_at_start": result.pieces_at_start,
        "hash_failures": result.hash_failures,
        "seconds": round(result.seconds, 3),
        "rate_mib_s": round(result.downloaded_bytes / max(result.seconds, 1e-9) / (1 << 20), 1),
    }
    if json_out:
        emit_json(doc)
        return
    err.print(
        f"fetched {result.name}: {result.total_size:,} bytes in {result.pieces} pieces, every piece passed its "
        f"SHA-1 check ({result.hash_failures} bad pieces from peers were rejected and fetched again)"
    )
    err.print(f"files: {result.path}")
    err.print(f"next: `m7b verify {result.name}` for the full proof (manifest hashes, license, checkpoint)")


@app.command("seed")
def seed_command(
    releases: Annotated[
        list[str],
        typer.Argument(help="Release names in the store, or release folders with FOLDER.torrent beside them."),
    ],
    listen: ListenOption = None,
    no_dht: LoopbackOption = False,
    upload_limit: Annotated[str | None, typer.Option(help="Max upload rate, e.g. 20M.")] = None,
    max_peers: Annotated[int, typer.Option(help="Max peer connections.")] = 200,
    tracker: Annotated[list[str] | None, typer.Option("--tracker", help="Also announce to URL (repeatable).")] = None,
    interval: Annotated[float, typer.Option(help="Seconds between status reports.")] = 5.0,
    json_out: Annotated[bool, typer.Option("--json", help="JSON lines: one status record per report.")] = False,
    status: Annotated[
        str | None,
        typer.Option(
            "--status",
            metavar="HOST:PORT",
            help="Serve a status page (/), /status.json and Prometheus /metrics on HOST:PORT (port 0 picks one).",
        ),
    ] = None,
) -> None:
    """Serve verified releases to the swarm until SIGINT/SIGTERM; refuse any release whose data fails a check."""
    from dataclasses import asdict

    from m7b.mirror.seed import Mirror, ReleaseStatus, resolve_seed, serve
    from m7b.mirror.status import StatusBoard, open_status_server

    options = session_options(
        listen, no_dht, upload_limit=parse_rate(upload_limit, "--upload-limit"), max_connections=max_peers
    )
    store = Store.from_env()
    resolved = [resolve_seed(r, store) for r in releases]
    board = StatusBoard()
    server = open_status_server(board, status)  # before the recheck, so a busy port fails at once
    mirror = Mirror(resolved, store, options, trackers=tracker or ())
    board.listen_port = mirror.listen_port
    if server and not json_out:
        err.print(f"status page: {server.url} (also {server.url}status.json and {server.url}metrics)")
    announced: set[str] = set()

    def report(statuses: list[ReleaseStatus]) -> None:
        if json_out:
            doc = {"event": "status", "listen_port": mirror.listen_port, "releases": [asdict(s) for s in statuses]}
            emit_json(doc | ({"status_url": server.url, "status_port": server.port} if server else {}))
            return
        for s in statuses:
            if s.state == "refused" and s.name not in announced:
                err.print(f"[red]refused[/red] {s.name}: {s.reason}", highlight=False)
                announced.add(s.name)
        table = Table(title=f"m7b seed — listening on port {mirror.listen_port}", title_justify="left")
        for col in ("release", "state", "peers", "uploaded", "rate"):
            table.add_column(col)
        for s in statuses:
            table.add_row(
                s.name,
                s.state,
                str(s.peers),
                f"{s.uploaded / (1 << 20):,.1f} MiB",
                f"{s.upload_rate / (1 << 20):,.1f} MiB/s",
            )
        out.print(table)

    with stop_on_signals() as stop, server or nullcontext():
        serve(mirror, report, should_stop=lambda: stop[0], interval=interval, observe=board.update)
    if json_out:
        emit_json({"event": "stopped"})
    else:
        err.print("stopped; resume data saved")
