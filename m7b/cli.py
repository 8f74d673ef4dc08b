"""The `m7b` command line: global options, error handling, and the registration of every command."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from m7b import __version__
from m7b.errors import EXIT_INTERRUPTED, M7bError
from m7b.render import err

app = typer.Typer(
    name="m7b",
    help="Fetch, verify, convert, run and seed a torrent-released open-weights model (Mistral 7B v0.1).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class _State:
    debug = False


def _version(value: bool) -> None:
    if value:
        typer.echo(f"m7b {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    _State.debug = debug


def _register() -> None:
    # Each area keeps its commands in its own module; importing it registers them on `app`.
    from m7b import cli_demo, cli_mirror, cli_release, cli_runtime, cli_store, cli_verify  # noqa: F401


def _is_usage_error(exc: Exception) -> bool:
    # typer ships its own copy of click; match its ClickException (usage errors, bad parameters) by name
    return any(cls.__name__ == "ClickException" for cls in type(exc).__mro__)


def main() -> None:
    _register()
    try:
        code = app(standalone_mode=False)  # a command's typer.Exit(code) comes back as the return value
        if isinstance(code, int) and code:
            sys.exit(code)
    except M7bError as exc:
        if _State.debug:
            raise
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:
        if _is_usage_error(exc):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        if _State.debug:
            raise
        err.print(
            f"[red]internal error:[/red] {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
            highlight=False,
        )
        sys.exit(1)
