"""`m7b list` and `m7b show`: the known releases and what the store holds of them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from m7b.cli import app
from m7b.manifests.loader import find_manifest, known_manifests, load_manifest
from m7b.manifests.schema import Manifest
from m7b.render import emit_json, out
from m7b.store import Store

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


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


@app.command("list")
def list_releases(json_out: JsonOption = False) -> None:
    """Known releases and their state in the store (absent / partial / downloaded / verified / converted)."""
    store = Store.from_env()
    rows = []
    for name, m in sorted(known_manifests().items()):
        rows.append(
            {
                "name": name,
                "title": m.title,
                "license": m.license,
                "release_date": m.release_date.isoformat() if m.release_date else None,
                "info_hash": m.torrent.info_hash_v1 or m.torrent.info_hash_v2,
                "state": str(store.state(m)),
                "converted": store.converted_layouts(name),
                "path": str(store.release_dir(name)),
            }
        )
    if json_out:
        emit_json({"store": str(store.home), "releases": rows})
        return
    table = Table(title=f"releases (store: {store.home})")
    for col in ("name", "title", "date", "license", "state", "info-hash"):
        table.add_column(col)
    for r in rows:
        state = r["state"] + (f" ({', '.join(r['converted'])})" if r["converted"] else "")
        table.add_row(r["name"], r["title"], r["release_date"] or "", r["license"], state, r["info_hash"] or "")
    out.print(table)


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="A release name (see `m7b list`) or a manifest .toml file.")],
    json_out: JsonOption = False,
) -> None:
    """Everything the manifest of a release says, with the source of each fact."""
    m = load_manifest(Path(name)) if name.endswith(".toml") else find_manifest(name)
    doc = manifest_document(m)
    doc["state"] = str(Store.from_env().state(m))
    doc["runtime"] = {"supported": m.unsupported is None, **({"reason": m.unsupported} if m.unsupported else {})}
    if json_out:
        emit_json(doc)
        return
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
