"""`m7b list`, `show`, `du` and `rm`: the known releases, what the store holds of them, and removing one."""

from __future__ import annotations

import dataclasses
import sys
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from m7b.errors import InvalidInputError
from m7b.manifests.schema import Manifest
from m7b.release import Release, release_names
from m7b.sizes import format_bytes
from m7b.store import Store
from m7b.usage import release_parts, release_usage

from .options import JsonOption, resolve, warn_skipped_manifests
from .render import err, out, show


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


def _key_label(text: str) -> str:
    """A manifest's signing key as its fingerprint (a PEM key's computed; one that does not parse said so)."""
    from m7b.errors import M7bError
    from m7b.verify.signature import parse_fingerprint, public_key_from_pem

    named = parse_fingerprint(text)
    if named is not None:
        return f"sha256:{named} (by fingerprint)"
    try:
        return f"sha256:{public_key_from_pem(text.encode(), 'the manifest').fingerprint} (PEM)"
    except M7bError as exc:
        return f"unusable ({exc})"


WIDE_LIST = 120  # columns from which `m7b list` shows every column


def list_releases(json_out: JsonOption = False) -> None:
    """Known releases and their state in the store (absent / partial / downloaded / verified / converted): those
    with a manifest, and those fetched from a magnet or .torrent without one."""
    store = Store.from_env()
    skipped = warn_skipped_manifests(store)
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
    doc: dict[str, Any] = {"store": str(store.home), "releases": rows}
    if skipped:
        doc["skipped_manifests"] = skipped
    show(doc, json_out, _print_list)


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
        str,
        typer.Argument(
            metavar="NAME|MAGNET|FILE",
            help="A release name (see `m7b list`), a magnet, a .torrent or a manifest .toml file.",
        ),
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
    doc["runtime"] = _runtime_document(None)  # every architecture a manifest can state runs (dense or experts)
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
    out.print(f"[bold]{escape(doc['name'])}[/bold] (no manifest)", highlight=False)
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
        f"[bold]{escape(m.title)}[/bold] ({m.name}) — {escape(m.publisher)}, "
        f"{m.release_date.isoformat() if m.release_date else 'date unknown'}, license {escape(m.license)}",
        highlight=False,  # rich's highlighter backtracks on one long word: quadratic (a 64 KB title took 55 s)
    )
    out.print(f"state in store: {doc['state']}", highlight=False)
    out.print("runtime: supported" + (f" (mixture of experts, {m.moe.describe()})" if m.moe else ""), highlight=False)
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
        out.print(
            "architecture: " + ", ".join(f"{k} {v}" for k, v in m.architecture.to_params().items()), highlight=False
        )
    if m.checkpoint:
        c = m.checkpoint
        out.print(f"checkpoint: {c.tensors} tensors, {c.parameters:,} parameters, {c.dtype}", highlight=False)
    for key in m.signing_keys:
        out.print(f"signing key: {_key_label(key)}", highlight=False)
    for a in m.archives:
        out.print(
            f"archive: {a.name}" + "".join(f", {k} {getattr(a, k)}" for k in ("md5", "sha256", "url") if getattr(a, k)),
            highlight=False,
        )
    sources = Table(title="sources")
    sources.add_column("fact")
    sources.add_column("source")
    for fact, source in m.sources.items():
        sources.add_row(fact, source)
    out.print(sources)


def _part_doc(part: Any) -> dict[str, Any]:
    return {"kind": part.kind, "path": str(part.path), "bytes": part.bytes}


def rm_release(
    target: Annotated[
        str,
        typer.Argument(
            metavar="NAME|DIR|MAGNET|FILE",
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
    rows: list[dict[str, Any]] = [
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
