"""`m7b fetch` and `m7b seed`: the BitTorrent side."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from m7b.errors import StorageError
from m7b.progress import ProgressEvent
from m7b.sizes import format_bytes, format_rate, parse_size
from m7b.store import Store

from .options import (
    DhtBootstrapOption,
    JsonLinesOption,
    ListenOption,
    LoopbackOption,
    NoDhtOption,
    PeerOption,
    PublicKeyOption,
    SignatureOption,
    note,
    seconds_option,
)
from .render import emit_json, err, format_elapsed, report_lock_wait, show
from .render_swarm import SeedDisplay, fetch_progress

if TYPE_CHECKING:
    from m7b.mirror.session import SessionOptions


def parse_rate(text: str | None, option: str) -> int:
    """Bytes per second with an optional K/M/G suffix; 0 or none = unlimited."""
    return parse_size(text, option, "bytes per second, e.g. 500K or 20M")


def session_options(
    listen: str | None,
    loopback: bool,
    *,
    no_dht: bool = False,
    dht_bootstrap: list[str] | None = None,
    **changes: object,
) -> SessionOptions:
    """--listen, --loopback, --no-dht and --dht-bootstrap as the library's session options
    (m7b.mirror.session.session_options)."""
    from m7b.errors import InvalidInputError
    from m7b.mirror.session import session_options as options_for

    if loopback and dht_bootstrap:
        raise InvalidInputError("--dht-bootstrap joins the DHT, which --loopback turns off: give one of them")
    if no_dht and dht_bootstrap:
        raise InvalidInputError("--dht-bootstrap joins the DHT, which --no-dht turns off: give one of them")
    return options_for(listen, loopback=loopback, dht=not no_dht, dht_bootstrap=dht_bootstrap or (), **changes)


def rerun_command(ctx: typer.Context, **replaced: object) -> str:
    """The command the user ran, as a shell line to paste: `m7b`, the command's name and every parameter given
    (from the click context, so nothing typed is lost; `replaced` values stand in for what was typed)."""
    import shlex

    words = ["m7b", ctx.info_name or ""]
    for param in ctx.command.params:
        name = param.name
        if not name:
            continue
        value = replaced.get(name, ctx.params.get(name))
        source = ctx.get_parameter_source(name)
        if name not in replaced and getattr(source, "name", "DEFAULT") == "DEFAULT":
            continue
        values = list(value) if isinstance(value, list | tuple) else [value]
        if param.param_type_name == "argument":
            words += [str(v) for v in values]
        elif getattr(param, "is_flag", False):
            words += [max(param.opts, key=len)] if value else []
        else:
            for v in values:
                words += [max(param.opts, key=len), str(v)]
    return shlex.join(words)


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


def fetch_command(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Argument(
            metavar="MAGNET|NAME|FILE|DIR",
            help="A magnet link, a release name (see `m7b list`), a .torrent file, a manifest .toml, or a folder "
            "with FOLDER.torrent beside it (fetched or repaired in place).",
        ),
    ],
    dest: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="Folder for the release's files (default: the store, or the folder named)."),
    ] = None,
    peer: PeerOption = None,
    timeout: Annotated[float, seconds_option("Give up after this many seconds without metadata or data.")] = 120.0,
    listen: ListenOption = None,
    loopback: LoopbackOption = False,
    no_dht: NoDhtOption = False,
    dht_bootstrap: DhtBootstrapOption = None,
    download_limit: Annotated[str | None, typer.Option(metavar="RATE", help="Max download rate, e.g. 20M.")] = None,
    resume_interval: Annotated[float, seconds_option("Seconds between resume-data saves.")] = 5.0,
    json_out: JsonLinesOption = False,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="--dest already holds (some of) the release: recheck it in place and rewrite only failing pieces. "
            "Without it m7b refuses to touch a file it did not write. (A release in the store is always repaired.)",
        ),
    ] = False,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="If another command is writing this release, fail at once (exit 8).")
    ] = False,
    signature: SignatureOption = None,
) -> None:
    """Download a release over BitTorrent, checking its metadata against its manifest before any data; its OMS
    signature (--signature, else a .sig beside the .torrent or manifest) is kept with its torrent in the store."""
    from m7b.errors import EXIT_INTERRUPTED
    from m7b.mirror.fetch import FilesInTheWayError, fetch, plan_fetch
    from m7b.verify.release import signature_to_keep

    options = session_options(
        listen,
        loopback,
        no_dht=no_dht,
        dht_bootstrap=dht_bootstrap,
        download_limit=parse_rate(download_limit, "--download-limit"),
    )
    store = Store.from_env()
    plan = plan_fetch(source, store, dest=dest, on_note=note)
    signed = signature_to_keep(plan.release, signature)  # a hostile one is refused before any data
    target = plan.target
    # the display closes (printing the state it stopped in) before an error or an interrupt is reported
    try:
        with stop_on_signals() as stop, fetch_progress(json_out) as progress:

            def on_progress(event: ProgressEvent) -> None:
                if event.phase == "space":
                    report_space(event, json_out)  # said once, before anything is written
                else:
                    progress(event)

            result = fetch(
                target,
                store=store,
                dest=plan.dest,
                options=options,
                peers=peer or (),
                timeout=timeout,
                resume_interval=resume_interval,
                progress=on_progress,
                should_stop=lambda: stop[0],
                repair=repair,
                wait=not no_wait,
                on_wait=lambda holder: report_lock_wait(holder, json_out),
                on_note=note,
            )
    except FilesInTheWayError as exc:
        raise StorageError(f"{exc}: to repair it, rerun with --repair") from exc
    except KeyboardInterrupt:
        # the whole command again (its --dest made absolute: the resume data is kept per destination folder)
        again = rerun_command(ctx, **({"dest": dest.resolve()} if dest is not None else {}))
        if json_out:
            emit_json({"event": "interrupted", "info_hash": target.info_hash, "rerun": again})
        err.print(f"interrupted: resume data saved; rerun `{again}` to continue", highlight=False, markup=False)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if signed is not None:
        store.save_signature(result.info_hash, signed)
    doc = result.to_json()
    show(doc, json_out, _print_fetched)


def report_space(event: ProgressEvent, json_out: bool) -> None:
    """The release's size and the destination's free space, said before anything is written."""
    x = event.extra
    if json_out:
        emit_json({"event": "space", "size": event.total, "present": event.done, **x})
        return
    have = f", {format_bytes(event.done)} already there" if event.done else ""
    err.print(
        f"{event.item}: {format_bytes(event.total or 0)}{have}; {format_bytes(x['free'])} free in {x['folder']}",
        highlight=False,
    )


def _print_fetched(doc: dict[str, Any]) -> None:
    rate = format_rate(doc["downloaded_bytes"] / max(doc["seconds"], 1e-9))
    err.print(
        f"fetched {doc['name']}: {format_bytes(doc['total_size'])} ({doc['total_size']:,} bytes) in {doc['pieces']} "
        f"pieces, every piece passed its SHA-1 check ({doc['hash_failures']} bad pieces from peers were rejected and "
        f"fetched again); {format_bytes(doc['downloaded_bytes'])} downloaded in {format_elapsed(doc['seconds'])} "
        f"at {rate}",
        highlight=False,
    )
    err.print(f"files: {doc['path']}")
    err.print(f"next: `m7b verify {doc['name']}` for the full proof (manifest hashes, license, checkpoint)")


def seed_command(
    releases: Annotated[
        list[str],
        typer.Argument(
            metavar="NAME|DIR|MAGNET|FILE",
            help="Release names (see `m7b list`), magnets, .torrent files, or release folders with FOLDER.torrent "
            "beside them.",
        ),
    ],
    listen: ListenOption = None,
    loopback: LoopbackOption = False,
    no_dht: NoDhtOption = False,
    dht_bootstrap: DhtBootstrapOption = None,
    upload_limit: Annotated[str | None, typer.Option(metavar="RATE", help="Max upload rate, e.g. 20M.")] = None,
    max_peers: Annotated[int, typer.Option(min=1, metavar="N", help="Max peer connections (at least 1).")] = 200,
    tracker: Annotated[
        list[str] | None, typer.Option("--tracker", metavar="URL", help="Also announce to URL (repeatable).")
    ] = None,
    interval: Annotated[float, seconds_option("Seconds between status reports.")] = 5.0,
    json_out: JsonLinesOption = False,
    status: Annotated[
        str | None,
        typer.Option(
            "--status",
            metavar="HOST:PORT",
            help="Serve a status page (/), /status.json and Prometheus /metrics on HOST:PORT (port 0 picks one).",
        ),
    ] = None,
    require_signature: Annotated[
        bool,
        typer.Option(
            "--require-signature",
            help="Refuse a release whose OMS signature is missing or does not verify against its manifest's keys "
            "(or --public-key).",
        ),
    ] = False,
    public_key: PublicKeyOption = None,
) -> None:
    """Serve verified releases to the swarm until SIGINT/SIGTERM; refuse any release whose data fails a check."""
    from dataclasses import asdict

    from m7b.mirror.seed import Mirror, ReleaseStatus, seed_releases, serve
    from m7b.mirror.status import StatusBoard
    from m7b.mirror.status_server import open_status_server

    options = session_options(
        listen,
        loopback,
        no_dht=no_dht,
        dht_bootstrap=dht_bootstrap,
        upload_limit=parse_rate(upload_limit, "--upload-limit"),
        max_connections=max_peers,
    )
    store = Store.from_env()
    resolved = seed_releases(
        releases, store, on_note=note, require_signature=require_signature, public_keys=public_key or ()
    )
    board = StatusBoard()
    server = open_status_server(board, status)  # before the recheck, so a busy port fails at once
    mirror = Mirror(resolved, store, options, trackers=tracker or ())
    board.listen_port = mirror.listen_port
    if server and not json_out:
        err.print(f"status page: {server.url} (also {server.url}status.json and {server.url}metrics)")
    announced: set[str] = set()
    started = time.monotonic()
    display = SeedDisplay() if not json_out else None

    def report(statuses: list[ReleaseStatus]) -> None:
        elapsed = time.monotonic() - started
        documents = [asdict(s) for s in statuses]
        if display is None:
            doc = {
                "event": "status",
                "listen_port": mirror.listen_port,
                "elapsed": round(elapsed, 3),
                "releases": documents,
            }
            emit_json(doc | ({"status_url": server.url, "status_port": server.port} if server else {}))
            return
        for s in statuses:
            if s.state == "refused" and s.name not in announced:
                display.note(f"[red]refused[/red] {escape(s.name)}: {escape(s.reason)}")
                announced.add(s.name)
        display.report(documents, mirror.listen_port, elapsed)

    with stop_on_signals() as stop, server or nullcontext(), display or nullcontext():
        serve(mirror, report, should_stop=lambda: stop[0], interval=interval, observe=board.update)
    if json_out:
        emit_json({"event": "stopped"})
    else:
        err.print("stopped; resume data saved")
