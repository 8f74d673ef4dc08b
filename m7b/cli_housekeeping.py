"""`m7b rm` and `m7b du`: remove a release from the store; what each release takes on disk."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from m7b.cli_options import JsonOption, resolve
from m7b.errors import InvalidInputError
from m7b.render import err, out, show
from m7b.sizes import format_bytes
from m7b.store import Store


def _part_doc(part: Any) -> dict[str, Any]:
    return {"kind": part.kind, "path": str(part.path), "bytes": part.bytes}


def rm_release(
    target: Annotated[
        str,
        typer.Argument(
            help="A release in the store: its name (see `m7b list`), its store folder, magnet, .torrent or manifest.",
            show_default=False,
        ),
    ],
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Remove without asking (needed when stdin is no terminal).")
    ] = False,
    keep_torrent: Annotated[
        bool, typer.Option("--keep-torrent", help="Keep the .torrent and the release record: fetch it again by name.")
    ] = False,
    keep_converted: Annotated[bool, typer.Option("--keep-converted", help="Keep the converted safetensors.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Remove a release from the store: its files (and any partial download), converted outputs, report, resume
    data, completion record, torrent and release record. Refused while the release is seeded or written."""
    from m7b.remove import Keep, Removal, remove_release, store_release

    store = Store.from_env()
    name = store_release(resolve(target, store), store).name

    def confirm(removal: Removal) -> bool:
        if not json_out:
            _print_plan(removal)
        if yes:
            return True
        if not sys.stdin.isatty():
            raise InvalidInputError(
                f"not removing {name}: stdin is not a terminal, so nobody can confirm; pass --yes to remove it"
            )
        return typer.confirm(f"remove {name} ({format_bytes(removal.bytes)})?", default=False, err=True)

    removal = remove_release(store, name, Keep(torrent=keep_torrent, converted=keep_converted), confirm)
    if removal is None:
        err.print("nothing removed")  # the user said no: not an error
        return
    doc = {
        "name": name,
        "removed": [_part_doc(p) for p in removal.remove],
        "kept": [_part_doc(p) for p in removal.kept],
        "bytes_removed": removal.bytes,
        "store": str(store.home),
    }
    show(
        doc, json_out, lambda d: err.print(f"removed {name}: {format_bytes(d['bytes_removed'])} freed", highlight=False)
    )


def _print_plan(removal: Any) -> None:
    table = Table(title=f"m7b rm {removal.name}", title_justify="left")
    table.add_column("removes", overflow="fold")
    table.add_column("size", justify="right")
    table.add_column("path", overflow="fold")
    for part in removal.remove:
        table.add_row(part.kind, format_bytes(part.bytes), str(part.path))
    for part in removal.kept:
        table.add_row(f"{part.kind} (kept)", format_bytes(part.bytes), str(part.path))
    err.print(table)


def du(json_out: JsonOption = False) -> None:
    """What each release takes on disk: its files, converted outputs, resume data and torrent, reports; totals."""
    from m7b.usage import store_usage

    usage = store_usage(Store.from_env())
    rows = [
        {
            "name": r.name,
            "release": r.release,
            "converted": r.converted,
            "resume_torrent": r.resume_torrent,
            "reports": r.reports,
            "total": r.total,
        }
        for r in usage.releases
    ]
    totals = {k: sum(r[k] for r in rows) for k in ("release", "converted", "resume_torrent", "reports", "total")}
    doc = {"store": str(usage.home), "releases": rows, "totals": totals, "other": usage.other}
    doc["store_bytes"] = usage.store_bytes
    show(doc, json_out, _print_du)


def _print_du(doc: dict[str, Any]) -> None:
    table = Table(title=f"disk usage (store: {doc['store']})", title_justify="left")
    columns = ("release", "converted", "resume_torrent", "reports", "total")
    table.add_column("name", overflow="fold")
    for col in columns:
        table.add_column(col.replace("_", "/"), justify="right")
    for r in doc["releases"]:
        table.add_row(r["name"], *(format_bytes(r[c]) for c in columns))
    table.add_row("[bold]total[/bold]", *(format_bytes(doc["totals"][c]) for c in columns))
    out.print(table)
    out.print(
        f"store {format_bytes(doc['store_bytes'])} in all; {format_bytes(doc['other'])} not in any release "
        "(manifests, locks)",
        highlight=False,
    )
