"""`m7b list` and `m7b show`: the known releases and what the store holds of them."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import typer
from rich.table import Table

from m7b.cli_options import JsonOption, resolve
from m7b.manifests.schema import Manifest
from m7b.release import release_names
from m7b.render import out, show
from m7b.sizes import format_bytes
from m7b.store import Store
from m7b.usage import release_parts, release_usage


def manifest_document(m: Manifest) -> dict[str, Any]:
    doc = dataclasses.asdict(m)
    doc["architecture"] = m.architecture.to_params() if m.architecture else None
    doc["release_date"] = m.release_date.isoformat() if m.release_date else None
    doc["origin"] = str(m.origin) if m.origin else None
    # absent facts stay absent in the document, never null-filled
    doc["files"] = [{k: v for k, v in f.items() if v is not None} for f in doc["files"]]
    doc["archives"] = [{k: v for k, v in a.items() if v is not None} for a in doc["archives"]]
    doc["torrent"] = {k: v for k, v in doc["torrent"].items() if v not in (None, ())}
    return {k: v for k, v in doc.items() if v not in (None, (), [])}


WIDE_LIST = 120  # columns from which `m7b list` shows every column


def list_releases(json_out: JsonOption = False) -> None:
    """Known releases and their state in the store (absent / partial / downloaded / verified / converted): those
    with a manifest, and those fetched from a magnet or .torrent without one."""
    store = Store.from_env()
    recorded = store.recorded_releases()
    rows = []
    for name, m in release_names(store).items():
        usage = release_usage(name, release_parts(store, name))
        rows.append(
            {
                "name": name,
                "title": m.title if m else name,
                "license": m.license if m else None,
                "release_date": m.release_date.isoformat() if m and m.release_date else None,
                "info_hash": m.torrent.info_hash if m else recorded.get(name),
                "manifest": m is not None,
                "state": str(store.state_of(name, m)),
                "converted": store.converted_layouts(name),
                "size": usage.release,  # bytes on disk of the release's files (and any partial download)
                "converted_bytes": usage.converted,
                "path": str(store.release_dir(name)),
            }
        )
    show({"store": str(store.home), "releases": rows}, json_out, _print_list)


def _print_list(doc: dict[str, Any]) -> None:
    table = Table(title=f"releases (store: {doc['store']})", title_justify="left")
    # nothing is cut: a long name, title or hash folds onto the next line within the terminal's width
    table.add_column("name", overflow="fold")
    table.add_column("state", overflow="fold")
    table.add_column("size", no_wrap=True, justify="right")
    table.add_column("converted", overflow="fold", justify="right")
    wide = out.width >= WIDE_LIST  # a narrow terminal leaves out title, date and info-hash (`m7b show` has them)
    for col in ("title", "date", "license", "info-hash") if wide else ("license",):
        table.add_column(col, overflow="fold")
    for r in doc["releases"]:
        state = r["state"]
        title = r["title"] if r["manifest"] else "(no manifest)"
        sizes = [
            format_bytes(r["size"]) if r["size"] else "",
            f"{format_bytes(r['converted_bytes'])} ({', '.join(r['converted'])})" if r["converted"] else "",
        ]
        more = (
            [title, r["release_date"] or "", r["license"] or "", r["info_hash"] or ""] if wide else [r["license"] or ""]
        )
        table.add_row(r["name"], state, *sizes, *more)
    out.print(table, soft_wrap=False)  # the table fits the terminal: its cells fold


def show_release(
    name: Annotated[
        str, typer.Argument(help="A release name (see `m7b list`), a magnet, a .torrent or a manifest .toml file.")
    ],
    json_out: JsonOption = False,
) -> None:
    """Everything the manifest of a release says, with the source of each fact."""
    store = Store.from_env()
    release = resolve(name, store)
    m = release.manifest
    if m is None:
        doc = {"name": release.name, "info_hash": release.info_hash, "manifest": None}
        doc |= {"torrent": str(release.torrent) if release.torrent else None, "path": str(release.folder)}
        doc["state"] = str(store.state_of(release.name)) if release.in_store else None
        show(doc, json_out, lambda d: out.print("\n".join(f"{k}: {v}" for k, v in d.items()), highlight=False))
        return
    doc = manifest_document(m)
    doc["state"] = str(store.state(m))
    doc["runtime"] = {"supported": m.unsupported is None, **({"reason": m.unsupported} if m.unsupported else {})}
    show(doc, json_out, lambda d: _print_manifest(m, d))


def _print_manifest(m: Manifest, doc: dict[str, Any]) -> None:
    out.print(
        f"[bold]{m.title}[/bold] ({m.name}) — {m.publisher}, "
        f"{m.release_date.isoformat() if m.release_date else 'date unknown'}, license {m.license}"
    )
    out.print(f"state in store: {doc['state']}")
    out.print(
        "runtime: " + ("supported" if m.unsupported is None else f"not supported ({m.unsupported})"), highlight=False
    )
    t = m.torrent
    for label, value in (
        ("torrent name", t.name),
        ("info-hash v1", t.info_hash_v1),
        ("info-hash v2", t.info_hash_v2),
        ("magnet", t.magnet),
    ):
        if value:
            out.print(f"{label}: {value}", highlight=False, soft_wrap=True)
    for tracker in t.trackers:
        out.print(f"tracker: {tracker}", highlight=False)
    for seed in t.web_seeds:
        out.print(f"web seed: {seed}", highlight=False)
    files = Table(title="files" + ("" if t.files_complete else " (partial list)"))
    for col in ("path", "size", "sha256", "md5"):
        files.add_column(col)
    for f in m.files:
        files.add_row(f.path, f"{f.size:,}" if f.size is not None else "—", f.sha256 or "—", f.md5 or "—")
    out.print(files)
    if m.moe:
        out.print(f"architecture: mixture of experts, {m.moe.describe()}", highlight=False)
    if m.architecture:
        out.print("architecture: " + ", ".join(f"{k} {v}" for k, v in m.architecture.to_params().items()))
    if m.checkpoint:
        c = m.checkpoint
        out.print(f"checkpoint: {c.tensors} tensors, {c.parameters:,} parameters, {c.dtype}")
    for a in m.archives:
        out.print(
            f"archive: {a.name}" + "".join(f", {k} {getattr(a, k)}" for k in ("md5", "sha256", "url") if getattr(a, k))
        )
    sources = Table(title="sources")
    sources.add_column("fact")
    sources.add_column("source")
    for fact, source in m.sources.items():
        sources.add_row(fact, source)
    out.print(sources)
