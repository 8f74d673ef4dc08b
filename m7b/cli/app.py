"""The `m7b` command line: every command in one list, global options, and error handling.

Commands live in this package's modules (one per command group) as plain functions; this module names each one
once, in `COMMANDS` and `RELEASE_COMMANDS`, and builds the app from them. Errors are one line on stderr and, with
`--json`, also a JSON document on stdout: `{"error": message, "exit_code": n, ...data}` (with `"event": "error"` in
a JSON-lines stream).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
from collections.abc import Callable
from typing import Annotated, Any, Protocol, TypeGuard

import typer
from rich.markup import escape
from typer.core import TyperArgument, TyperCommand, TyperGroup

from m7b import __version__
from m7b.errors import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, M7bError
from m7b.paths import too_long_error

from . import demo as cli_demo
from . import mirror as cli_mirror
from . import release as cli_release
from . import runtime as cli_runtime
from . import store as cli_store
from . import verify as cli_verify
from .options import CliState, cli_message
from .render import emit_json, err

COMMANDS: list[tuple[str, Callable[..., None]]] = [
    ("list", cli_store.list_releases),
    ("show", cli_store.show_release),
    ("du", cli_store.du),
    ("rm", cli_store.rm_release),
    ("fetch", cli_mirror.fetch_command),
    ("verify", cli_verify.verify),
    ("convert", cli_verify.convert),
    ("run", cli_runtime.run),
    ("smoke", cli_runtime.smoke),
    ("seed", cli_mirror.seed_command),
    ("demo", cli_demo.demo),
]
RELEASE_COMMANDS: list[tuple[str, Callable[..., None]]] = [
    ("synth", cli_release.synth),
    ("create", cli_release.create),
    ("sign", cli_release.sign),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"m7b {__version__}")
        raise typer.Exit()


def _root(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    if isinstance(ctx.obj, CliState):
        ctx.obj.debug = debug


class _NamedArgument(TyperArgument):
    """An argument whose metavar (`NAME|DIR`) is its whole description in --help: no type column beside it."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None if self.metavar else super().display_type_rich(ctx)


class _PlainLabels:
    """--help in a user's words, never typer's type labels (`<bool>`, `<str>`, `<list[str]>`): a flag (`--json`,
    `--help`) takes no value, so it shows none; an argument shows only its metavar. Every option that takes a value
    names it with its own metavar (`DIR`, `HOST:PORT`, `SECONDS`), declared with the option."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]  # a mixin: the click command class comes after it
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
            elif type(param) is TyperArgument:
                param.__class__ = _NamedArgument
        return params


class _Command(_PlainLabels, TyperCommand):
    pass


class _Group(_PlainLabels, TyperGroup):
    pass


def build_app() -> typer.Typer:
    app = typer.Typer(
        cls=_Group,
        name="m7b",
        help="Fetch, verify, convert, run and seed a torrent-released open-weights model (Mistral 7B v0.1).",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    app.callback()(_root)
    for name, command in COMMANDS:
        app.command(name, cls=_Command)(command)
    release_app = typer.Typer(
        cls=_Group,
        help="Make releases: synthetic ones for testing, torrents and manifests for publishing.",
        no_args_is_help=True,
    )
    for name, command in RELEASE_COMMANDS:
        release_app.command(name, cls=_Command)(command)
    app.add_typer(release_app, name="release")
    return app


app = build_app()


class _UsageError(Protocol):
    """What m7b uses of click's ClickException."""

    exit_code: int

    def show(self) -> None: ...


def _is_usage_error(exc: Exception) -> TypeGuard[_UsageError]:
    # typer ships its own copy of click; match its ClickException (usage errors, bad parameters) by name
    return any(cls.__name__ == "ClickException" for cls in type(exc).__mro__)


def _fail(state: CliState, message: str, exit_code: int, data: dict[str, Any] | None = None) -> None:
    """Report an error the way the output was asked for, and exit with its code."""
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False)  # the one line for people, always
    if state.json:
        doc = {"event": "error"} if state.stream else {}
        with contextlib.suppress(BrokenPipeError):  # the reader went away: the stderr line and exit code still tell
            emit_json({**doc, "error": message, "exit_code": exit_code, **(data or {})})
    sys.exit(exit_code)


def _reader_gone() -> None:
    """stdout's reader went away (`| head`): stop quietly with 141, as a command killed by SIGPIPE would. stdout is
    pointed at devnull so that the interpreter's final flush does not fail again (Python's docs on SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.__stdout__.fileno() if sys.__stdout__ else 1)
    sys.exit(EXIT_BROKEN_PIPE)


def _is_broken_pipe(exc: BaseException | None) -> bool:
    return isinstance(exc, OSError) and exc.errno == errno.EPIPE


def _on_signals(state: CliState) -> None:
    """SIGTERM (what `kill`, systemd and `timeout` send) unwinds a command as Ctrl-C does: every `with` and
    `finally` on the way out runs, so temporary files are removed (`m7b.atomic`) and locks released. fetch and seed
    install their own handlers while they run (they save resume data first) and restore these after."""

    def handler(signum: int, frame: object) -> None:
        if state.interrupted_by is not None:  # already unwinding: let the cleanup finish (SIGKILL still ends it)
            return
        state.interrupted_by = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        raise KeyboardInterrupt

    for signum in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(signum) is not signal.SIG_IGN:  # a command started ignoring it (nohup, `cmd &`) still does
            signal.signal(signum, handler)


def _interrupted(state: CliState) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second signal while exiting ends the process at once
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    how = state.interrupted_by or "Ctrl-C"
    message = f"interrupted ({how}): temporary files removed; what was finished before is kept as it was"
    _fail(state, message, EXIT_INTERRUPTED, {"signal": how})


def main() -> None:
    state = CliState()
    _on_signals(state)
    try:
        code = app(standalone_mode=False, obj=state)  # a command's typer.Exit(code) comes back as the return value
        sys.stdout.flush()  # here, so that a reader gone away is seen by the handler below
        if code == EXIT_INTERRUPTED and state.interrupted_by:  # typer turns an interrupt into Exit(130)
            _interrupted(state)
        if isinstance(code, int) and code:
            sys.exit(code)
    except M7bError as exc:
        if state.debug:
            raise
        _fail(state, cli_message(exc), exc.exit_code, exc.data)
    except KeyboardInterrupt:
        _interrupted(state)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except SystemExit as exc:
        if _is_broken_pipe(exc.__context__):  # click turns a broken stdout into a bare exit 1
            _reader_gone()
        raise
    except typer.Abort:  # click's own prompts turn an interrupt into Abort
        _interrupted(state)
    except BrokenPipeError:
        _reader_gone()
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG and not state.debug:
            # any path the user typed (an argument, --out, --dest, --manifest, M7B_HOME) that no file system holds
            refused = too_long_error(exc.filename or "", "the path")
            _fail(state, cli_message(refused), refused.exit_code, refused.data)
        if _is_usage_error(exc):
            exc.show()
            sys.exit(exc.exit_code)
        if state.debug:
            raise
        _fail(state, f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", 1)
