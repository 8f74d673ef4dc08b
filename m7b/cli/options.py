"""Option and argument definitions shared by the commands, declared once; and the CLI's wording of library data.

The `--json` options record on the click context's state (`CliState`, made by `m7b.cli.main`) that the output is
JSON, so that an error becomes a JSON document on stdout too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from m7b.errors import M7bError
from m7b.release import Release, resolve_release, skipped_manifests
from m7b.store import Store

from .render import err


@dataclass
class CliState:
    """Per-invocation state, carried as the click context's `obj` (no module globals)."""

    debug: bool = False
    json: bool = False  # --json was given: errors go to stdout as JSON too
    stream: bool = False  # the output is JSON lines: the error is an event of the stream
    interrupted_by: str | None = None  # "SIGTERM" or "Ctrl-C" once a signal has started unwinding the command


def _state(ctx: typer.Context) -> CliState | None:
    return ctx.obj if isinstance(ctx.obj, CliState) else None


def _json_document(ctx: typer.Context, value: bool) -> bool:
    state = _state(ctx)
    if state is not None and value:
        state.json = True
    return value


def _json_lines(ctx: typer.Context, value: bool) -> bool:
    state = _state(ctx)
    if state is not None and value:
        state.json = state.stream = True
    return value


JsonOption = Annotated[
    bool, typer.Option("--json", callback=_json_document, help="Print one JSON document (errors too).")
]
JsonLinesOption = Annotated[
    bool,
    typer.Option("--json", callback=_json_lines, help="JSON lines: progress events, then a result or an error event."),
]
TargetArg = Annotated[
    str | None,
    typer.Argument(
        metavar="NAME|DIR|MAGNET|FILE",
        help="A release name (see `m7b list`), a folder, a magnet, a .torrent or a manifest .toml.",
        show_default=False,
    ),
]
ReleaseArg = Annotated[
    str,
    typer.Argument(
        metavar="NAME|DIR",
        help="A release name in the store (see `m7b list`) or a release folder "
        "(params.json, tokenizer.model, consolidated.00.pth or consolidated.safetensors).",
    ),
]
DeviceOption = Annotated[
    str, typer.Option(metavar="auto|cpu|cuda[:N]", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N.")
]
DtypeOption = Annotated[
    str | None,
    typer.Option(
        metavar="float32|bfloat16",
        help="float32 or bfloat16 (default: bfloat16 on CUDA; on the CPU the checkpoint's own dtype, bfloat16 for "
        "Mistral 7B, computed straight from the memory-mapped weights; float32 on the CPU holds a converted copy "
        "of every weight: 29 GB for the 7B).",
    ),
]


def _positive_seconds(value: float) -> float:
    """Seconds that must be more than 0 (a timeout, an interval): else a usage error (exit 2)."""
    if not value > 0:  # NaN too
        raise typer.BadParameter(f"{value:g} is not a number of seconds more than 0")
    return value


def seconds_option(help: str) -> typer.models.OptionInfo:
    """A number of seconds, more than 0 (--timeout, --interval, ...)."""
    return typer.Option(metavar="SECONDS", help=help, callback=_positive_seconds)


PeerOption = Annotated[
    list[str] | None, typer.Option("--peer", metavar="HOST:PORT", help="Connect to HOST:PORT (repeatable).")
]
ListenOption = Annotated[
    str | None,
    typer.Option(
        "--listen", metavar="HOST:PORT", help="Listen on HOST:PORT (default 0.0.0.0:6881; port 0 picks a free one)."
    ),
]
LoopbackOption = Annotated[
    bool,
    typer.Option(
        "--loopback",
        help="The loopback profile, for a swarm on one machine: no DHT, LSD, UPnP/NAT-PMP or uTP, several peers "
        "per address; trackers, web seeds and --peer only (local swarms, tests).",
    ),
]
NoDhtOption = Annotated[
    bool, typer.Option("--no-dht", help="No DHT: peers come from trackers, LSD, web seeds and --peer only.")
]
DhtBootstrapOption = Annotated[
    list[str] | None,
    typer.Option(
        "--dht-bootstrap",
        metavar="HOST:PORT",
        help="Join the DHT through this node (repeatable; default: the mainline routers). Nodes all on private or "
        "loopback addresses make a private DHT: libtorrent's one-node-per-subnet rules are lifted.",
    ),
]

SignKeyOption = Annotated[
    Path | None,
    typer.Option(
        "--sign-key",
        metavar="KEY.pem",
        help="Sign with this EC private key (PEM, as `openssl ecparam -genkey` writes it); an encrypted key's "
        "passphrase is asked on a terminal, else read from M7B_SIGN_PASSPHRASE.",
    ),
]
PublicKeyOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--public-key",
        metavar="FILE",
        help="A PEM public key you trust to sign this (repeatable), besides the keys the manifest names.",
    ),
]
SignatureOption = Annotated[
    Path | None,
    typer.Option(
        "--signature",
        metavar="FILE",
        help="The OMS signature to check (default: DIR.sig beside the folder, else the store's copy).",
    ),
]
RequireSignatureOption = Annotated[
    bool,
    typer.Option("--require-signature", help="Fail (exit 3) when there is no signature, not just report it."),
]


def signing_key(path: Path) -> Any:
    """The EC private key at `path`; an encrypted one's passphrase from M7B_SIGN_PASSPHRASE, else asked on a
    terminal (never from argv)."""
    import getpass
    import sys

    from m7b.errors import InvalidInputError
    from m7b.verify.signature import PASSPHRASE_ENV, load_signing_key, passphrase_from_env

    try:
        return load_signing_key(path, passphrase_from_env())
    except InvalidInputError as exc:
        if not exc.data.get("needs_passphrase"):
            raise
        if not sys.stdin.isatty():
            raise InvalidInputError(
                f"{path} is encrypted and there is no terminal to ask its passphrase on: set {PASSPHRASE_ENV}",
                field="sign_key",
            ) from exc
        return load_signing_key(path, getpass.getpass(f"passphrase for {path}: "))


# library parameter (an error's `field`/`fields` data) -> the flag that sets it
FLAG_FOR: dict[str, str] = {
    "max_tokens": "--max-tokens",
    "temperature": "--temperature",
    "top_p": "--top-p",
    "device": "--device",
    "peers": "--peer",
    "listen": "--listen",
    "timeout": "--timeout",
    "tokenizer": "--tokenizer",
    "manifest_name": "--name",
    "work": "--work",
    "manifest": "--manifest",
    "torrent": "--torrent",
    "window": "--window",
    "cpu_kernels": "--cpu-kernels",
    "weights": "--weights",
    "public_key": "--public-key",
    "signature": "--signature",
    "require_signature": "--require-signature",
    "sign_key": "--sign-key",
}


def cli_message(exc: M7bError) -> str:
    """The library's message in the CLI's words: a parameter it names (at the start, or in parentheses) becomes the
    flag that sets it."""
    message = str(exc)
    fields = exc.data.get("fields") or ((exc.data["field"],) if "field" in exc.data else ())
    for field in fields if isinstance(fields, tuple | list) else ():
        flag = FLAG_FOR.get(str(field))
        if flag is None:
            continue
        if message.startswith(f"{field} "):
            message = flag + message[len(str(field)) :]
        message = message.replace(f"({field})", f"({flag})")
    return message


def note(text: str) -> None:
    """A library note (`Release.note`: the text could have meant something else too) on stderr."""
    err.print(f"[yellow]note:[/yellow] {escape(text)}", highlight=False)


def warn_skipped_manifests(store: Store) -> list[dict[str, str]]:
    """Name on stderr each manifest file that does not load (the command goes on without it); returned as data for
    a JSON document."""
    skipped = [{"path": str(s.path), "reason": s.reason} for s in skipped_manifests(store)]
    for s in skipped:
        err.print(
            f"[yellow]warning:[/yellow] skipped manifest {escape(s['path'])}: {escape(s['reason'])}", highlight=False
        )
    return skipped


def resolve(text: str, store: Store) -> Release:
    """The one resolver (m7b.release), with its note — when the text could have meant something else — on stderr."""
    warn_skipped_manifests(store)
    release = resolve_release(text, store)
    if release.note:
        note(release.note)
    return release


def fail_after_document(exc: M7bError, json_out: bool) -> None:
    """Raise a failure whose details a document already printed on stdout (a verify report, a smoke table): with
    --json that document is the answer, so the error goes to stderr only and stdout stays one document."""
    if not json_out:
        raise exc
    err.print(f"[red]error:[/red] {escape(cli_message(exc))}", highlight=False)
    raise typer.Exit(exc.exit_code)
