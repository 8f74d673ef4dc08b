"""`m7b list` and `m7b show`: the known releases and what the store holds of them."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import typer
from rich.table import Table

from m7b.cli_options import JsonOption, resolve
from m7b.manifests.schema import Manifest
from m7b.release import Release, release_names
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
        show(_manifestless_document(store, release), json_out, _print_manifestless)
        return
    doc = manifest_document(m)
    doc["state"] = str(store.state(m))
    doc["runtime"] = _runtime_document(m.unsupported)
    show(doc, json_out, lambda d: _print_manifest(m, d))


def _runtime_document(unsupported: str | None) -> dict[str, Any]:
    return {"supported": unsupported is None, **({"reason": unsupported} if unsupported else {})}


def _manifestless_document(store: Store, release: Release) -> dict[str, Any]:
    """What is known of a release without a manifest; absent facts are left out, never null-filled. `runtime` comes
    from the folder's params.json when it has one."""
    from m7b.manifests.architecture import runtime_support

    doc: dict[str, Any] = {"name": release.name, "manifest": False}
    if release.info_hash:
        doc["info_hash"] = release.info_hash
    if release.torrent:
        doc["torrent"] = str(release.torrent)
    doc["path"] = str(release.folder)
    if release.in_store:
        doc["state"] = str(store.state_of(release.name))
    params = release.folder / "params.json"
    if params.is_file():
        doc["runtime"] = _runtime_document(runtime_support(params))
    return doc


def _print_manifestless(doc: dict[str, Any]) -> None:
    out.print(f"[bold]{doc['name']}[/bold] (no manifest)")
    labels = {"info_hash": "info-hash", "torrent": "torrent", "path": "path", "state": "state in store"}
    for key, label in labels.items():
        if key in doc:
            out.print(f"{label}: {doc[key]}", highlight=False, soft_wrap=True)
    runtime = doc.get("runtime")
    if runtime is not None:
        verdict = "supported" if runtime["supported"] else f"not supported ({runtime['reason']})"
        out.print(f"runtime: {verdict}", highlight=False)


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
