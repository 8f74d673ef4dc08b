"""`m7b verify` and `m7b convert`: prove a release is what its magnet and publisher named; convert it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from m7b.errors import NotFoundError
from m7b.release import Release, require_present
from m7b.sizes import format_bytes, format_rate
from m7b.store import Store

from .options import JsonOption, TargetArg, fail_after_document, resolve
from .render import err, out, progress_bars, report_lock_wait, show

_STYLE = {
    "ok": "green",
    "note": "cyan",
    "invalid": "yellow",
    "mismatch": "red",
    "missing": "yellow",
    "unsafe": "bold red",
}


def _release(store: Store, target: str | None, manifest_file: Path | None, torrent: Path | None) -> Release:
    """The release to check: resolved from TARGET (or the manifest file), with --manifest/--torrent overriding."""
    from m7b.manifests.loader import load_manifest

    manifest = load_manifest(manifest_file) if manifest_file else None
    if target is None:
        if manifest_file is None:
            raise NotFoundError("name a release (see `m7b list`), a folder, or pass --manifest FILE")
        target = str(manifest_file)
    release = resolve(target, store)
    if manifest is not None:
        release = replace(release, manifest=manifest)
    if torrent is not None:
        release = replace(release, torrent=torrent)
    return release


def verify(
    target: TargetArg = None,
    manifest: Annotated[
        Path | None, typer.Option(metavar="FILE", help="Manifest .toml to check against (default: the release's own).")
    ] = None,
    torrent: Annotated[
        Path | None, typer.Option(metavar="FILE", help=".torrent metadata (default: the store's, by info-hash).")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Prove a release is what its magnet and publisher named: torrent pieces, manifest digests, license
    evidence, and a checkpoint inspected before anything is unpickled. A converted folder is checked against
    its SHA256SUMS."""
    from m7b.verify.release import verify as verify_resolved
    from m7b.verify.sums import is_converted_dir, verify_converted

    store = Store.from_env()
    if target and Path(target).expanduser().is_dir() and is_converted_dir(Path(target).expanduser()):
        root = Path(target).expanduser().resolve()
        with progress_bars(enabled=not json_out) as progress:
            report = verify_converted(root, name=root.parent.name, progress=progress)
        saved = None
    else:
        release = _release(store, target, manifest, torrent)
        with progress_bars(enabled=not json_out) as progress:
            verification = verify_resolved(release, store, progress=progress)
        report, saved = verification.report, verification.report_path
    doc = report.to_json()
    doc["report_path"] = str(saved) if saved else None
    show(doc, json_out, _print_report)
    _fail_unless_ok(report, json_out)


def _fail_unless_ok(report: Any, json_out: bool) -> None:
    """The report is printed; a failing verdict becomes the error (one line on stderr) and its exit code."""
    from m7b.verify.findings import error_for

    failures = report.failures()
    if not failures:
        return
    error = error_for(report.verdict)
    worst = next(f for f in failures if f.status == report.verdict)
    more = f" (and {len(failures) - 1} more finding(s) above)" if len(failures) > 1 else ""
    # findings name the parameters that would fix them ("(torrent)"); the CLI words them as its flags
    message = f"verification failed ({report.verdict}): {worst.message}{more}"
    fail_after_document(error(message, fields=("manifest", "torrent")), json_out)


def _print_report(doc: dict[str, Any]) -> None:
    table = Table(title=f"{doc['kind']} {doc['name'] or ''} ({doc['root']})")
    for col in ("check", "status", "finding"):
        table.add_column(col, overflow="fold")
    for f in doc["findings"]:
        style = _STYLE.get(f["status"], "")
        table.add_row(f["check"], f"[{style}]{f['status']}[/{style}]", f["message"])
    out.print(table)
    rate = f", {format_rate(doc['bytes_read'] / doc['seconds'])}" if doc["seconds"] > 0 else ""
    style = _STYLE.get(doc["verdict"], "")
    out.print(
        f"verdict: [{style}]{doc['verdict']}[/{style}] (exit {doc['exit_code']}); "
        f"read {format_bytes(doc['bytes_read'])} in {doc['seconds']:.1f} s{rate}",
        highlight=False,
    )
    if doc["kind"] == "release":
        out.print(
            f"bound to the magnet: {'yes' if doc['bound_to_magnet'] else 'no'}; bound to the publisher: "
            f"{'yes' if doc['bound_to_publisher'] else 'no'}",
            highlight=False,
        )
    if doc.get("report_path"):
        out.print(f"report: {doc['report_path']}", highlight=False)


def _known_sha256(store: Store, name: str | None, checkpoint: Path) -> str | None:
    """The checkpoint's sha256 from the verification report, if the file is unchanged since."""
    if not name or not store.is_verified(name):
        return None
    from m7b.store import unchanged_since

    try:
        report = json.loads(store.report_path(name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for entry in report.get("files", []):
        if entry.get("path") == checkpoint.name and unchanged_since(checkpoint.parent, entry):
            return entry.get("sha256")
    return None


def _default_out(store: Store, release: Release, layout: str) -> Path:
    """Where a conversion goes without --out: a store release's converted/NAME/LAYOUT (where `m7b run NAME` looks
    first); any other folder's output lies beside it as <folder>-<layout>, so it never stands in the store for an
    unrelated release of the same name."""
    if release.in_store and release.name:
        return store.converted_dir(release.name, layout)
    return release.folder.parent / f"{release.folder.name}-{layout}"


def convert(
    target: TargetArg = None,
    to: Annotated[
        str,
        typer.Option(
            "--to", metavar="native|hf", help="native (consolidated.safetensors) or hf (Hugging Face layout)."
        ),
    ] = "native",
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            metavar="DIR",
            help="Folder to create (default: the store's converted/<name>/<layout> for a store release, "
            "<folder>-<layout> beside any other folder).",
        ),
    ] = None,
    max_shard_size: Annotated[
        str, typer.Option(metavar="SIZE", help="hf only: largest shard, e.g. 5GB or 500MB.")
    ] = "5GB",
    json_out: JsonOption = False,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="If another command is writing this output, fail at once (exit 8).")
    ] = False,
) -> None:
    """Convert a release to safetensors: streaming, deterministic, atomic, every tensor checked bit for bit."""
    from m7b.locks import hold
    from m7b.verify.convert import CHECKPOINT, convert_release

    store = Store.from_env()
    if target is None:
        raise NotFoundError("name a release (see `m7b list`) or a folder to convert")
    release = resolve(target, store)
    if release.manifest is not None:
        release.manifest.require_runnable("convert")
    release = require_present(release)
    root, name = release.folder, (release.name if release.in_store else None)
    label = name or root.name
    out_path = out_dir or _default_out(store, release, to)
    verified = bool(name) and store.is_verified(name)
    if not verified and not json_out:
        err.print(
            f"[yellow]note:[/yellow] {label} has no passing verification report; run `m7b verify` to bind it "
            "to its magnet and publisher",
            highlight=False,
        )
    lock = store.converted_lock(label, to)
    wait_report = lambda holder: report_lock_wait(holder, json_out)  # noqa: E731
    with (
        hold(store, lock, f"converted output {label}/{to}", wait=not no_wait, on_wait=wait_report),
        progress_bars(enabled=not json_out) as progress,
    ):
        result = convert_release(
            root,
            out_path,
            to,
            name=label,
            source_sha256=_known_sha256(store, name, root / CHECKPOINT),
            max_shard_size=_shard_size(max_shard_size),
            progress=progress,
        )
    doc = {
        "name": label,
        "layout": result.layout,
        "out": str(result.out),
        "verified_source": verified,
        "tensors": result.tensors,
        "tensor_bytes": result.tensor_bytes,
        "source_sha256": result.source_sha256,
        "seconds": round(result.seconds, 3),
        "files": result.files,
        "notes": list(result.notes),
    }
    show(doc, json_out, lambda _: _print_conversion(label, result))


def _print_conversion(label: str, result: Any) -> None:
    table = Table(title=f"{label} → {result.layout} ({result.out})")
    table.add_column("file")
    table.add_column("sha256")
    for fname, digest in result.files.items():
        table.add_row(fname, digest)
    out.print(table)
    for note in result.notes:
        err.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    out.print(
        f"{result.tensors} tensors ({format_bytes(result.tensor_bytes)}) written and checked bit for bit in "
        f"{result.seconds:.1f} s; hashes in {result.out / 'SHA256SUMS'}",
        highlight=False,
    )


def _shard_size(text: str) -> int:
    from m7b.sizes import parse_size

    return parse_size(text, "--max-shard-size", "bytes or a size like 5GB or 500MB", minimum=1)
