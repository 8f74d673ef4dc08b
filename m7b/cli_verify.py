"""`m7b verify` and `m7b convert`: prove a release is what its magnet and publisher named; convert it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from m7b.cli import app
from m7b.errors import InvalidInputError, MismatchError, NotFoundError, UnsafeError
from m7b.manifests.schema import Manifest
from m7b.render import emit_json, err, out, progress_bars
from m7b.store import Store

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
Target = Annotated[str | None, typer.Argument(help="A release name (see `m7b list`) or a folder.", show_default=False)]
_STYLE = {
    "ok": "green",
    "note": "cyan",
    "invalid": "yellow",
    "mismatch": "red",
    "missing": "yellow",
    "unsafe": "bold red",
}


def _resolve(store: Store, target: str | None, manifest_file: Path | None) -> tuple[Path, str | None, Manifest | None]:
    """The folder to check, the release name (when it has one in the store) and its manifest."""
    from m7b.manifests.loader import find_manifest, known_manifests, load_manifest

    manifest = load_manifest(manifest_file) if manifest_file else None
    if target is None:
        if manifest is None:
            raise NotFoundError("name a release (see `m7b list`), a folder, or pass --manifest FILE")
        target = manifest.name
    as_path = Path(target).expanduser()
    if as_path.is_dir() and ("/" in target or target.startswith(".") or not (store.release_dir(target)).is_dir()):
        root = as_path.resolve()
        name = root.name if root.parent == store.releases_dir.resolve() else None
        if manifest is None and name is not None and name in known_manifests():
            manifest = find_manifest(name)
        return root, name, manifest
    manifest = manifest or find_manifest(target)
    root = store.release_dir(target)
    if not root.is_dir():
        raise NotFoundError(
            f"release {target} is not in the store ({root} does not exist): fetch it first with "
            f"`m7b fetch {target}`, or pass its folder"
        )
    return root, target, manifest


def _torrent_for(store: Store, manifest: Manifest | None, torrent: Path | None) -> Path | None:
    if torrent is not None:
        return torrent
    if manifest is None:
        return None
    for ih in (manifest.torrent.info_hash_v1, manifest.torrent.info_hash_v2):
        if ih and store.torrent_path(ih).is_file():
            return store.torrent_path(ih)
    return None


@app.command("verify")
def verify(
    target: Target = None,
    manifest: Annotated[
        Path | None, typer.Option(help="Manifest .toml to check against (default: the release's own).")
    ] = None,
    torrent: Annotated[
        Path | None, typer.Option(help=".torrent metadata (default: the store's, by info-hash).")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Prove a release is what its magnet and publisher named: torrent pieces, manifest digests, license
    evidence, and a checkpoint inspected before anything is unpickled. A converted folder is checked against
    its SHA256SUMS."""
    from m7b.atomic import write_text
    from m7b.verify.check import verify_release
    from m7b.verify.sums import is_converted_dir, verify_converted

    store = Store.from_env()
    if target and Path(target).expanduser().is_dir() and is_converted_dir(Path(target).expanduser()):
        root = Path(target).expanduser().resolve()
        with progress_bars(enabled=not json_out) as progress:
            report = verify_converted(root, name=root.parent.name, progress=progress)
        saved = None
    else:
        root, name, man = _resolve(store, target, manifest)
        with progress_bars(enabled=not json_out) as progress:
            report = verify_release(root, man, _torrent_for(store, man, torrent), name=name, progress=progress)
        saved = store.report_path(name) if name else None
    doc = report.to_json()
    doc["report_path"] = str(saved) if saved else None
    if saved:
        saved.parent.mkdir(parents=True, exist_ok=True)
        write_text(saved, json.dumps(doc, indent=2) + "\n")
    if json_out:
        emit_json(doc)
    else:
        _print_report(doc)
    _fail_unless_ok(report)


def _fail_unless_ok(report: Any) -> None:
    """The report is printed; a failing verdict becomes the error (one line on stderr) and its exit code."""
    from m7b.verify.findings import Status

    failures = report.failures()
    if not failures:
        return
    error = {
        Status.UNSAFE: UnsafeError,
        Status.MISSING: NotFoundError,
        Status.MISMATCH: MismatchError,
        Status.INVALID: InvalidInputError,
    }[report.verdict]
    worst = next(f for f in failures if f.status == report.verdict)
    more = f" (and {len(failures) - 1} more finding(s) above)" if len(failures) > 1 else ""
    raise error(f"verification failed ({report.verdict}): {worst.message}{more}")


def _print_report(doc: dict[str, Any]) -> None:
    table = Table(title=f"{doc['kind']} {doc['name'] or ''} ({doc['root']})")
    for col in ("check", "status", "finding"):
        table.add_column(col, overflow="fold")
    for f in doc["findings"]:
        style = _STYLE.get(f["status"], "")
        table.add_row(f["check"], f"[{style}]{f['status']}[/{style}]", f["message"])
    out.print(table)
    mb = doc["bytes_read"] / 1e6
    rate = f", {mb / doc['seconds']:.0f} MB/s" if doc["seconds"] > 0 else ""
    style = _STYLE.get(doc["verdict"], "")
    out.print(
        f"verdict: [{style}]{doc['verdict']}[/{style}] (exit {doc['exit_code']}); read {mb:,.1f} MB in "
        f"{doc['seconds']:.1f} s{rate}",
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
    try:
        report = json.loads(store.report_path(name).read_text(encoding="utf-8"))
        st = checkpoint.stat()
    except (OSError, ValueError):
        return None
    for entry in report.get("files", []):
        if (
            entry.get("path") == checkpoint.name
            and entry.get("size") == st.st_size
            and entry.get("mtime_ns") == st.st_mtime_ns
        ):
            return entry.get("sha256")
    return None


@app.command("convert")
def convert(
    target: Target = None,
    to: Annotated[
        str, typer.Option("--to", help="native (consolidated.safetensors) or hf (Hugging Face layout).")
    ] = "native",
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Folder to create (default: the store's converted/<name>/<layout>).")
    ] = None,
    max_shard_size: Annotated[str, typer.Option(help="hf only: largest shard, e.g. 5GB or 500MB.")] = "5GB",
    json_out: JsonOption = False,
) -> None:
    """Convert a release to safetensors: streaming, deterministic, atomic, every tensor checked bit for bit."""
    from m7b.verify.convert import CHECKPOINT, convert_release

    store = Store.from_env()
    if target is not None and not Path(target).expanduser().is_dir():
        from m7b.cli_runtime import refuse_unsupported

        refuse_unsupported(target, "convert")
    root, name, _ = _resolve(store, target, None)
    label = name or root.name
    out_path = out_dir or store.converted_dir(label, to)
    verified = bool(name) and store.is_verified(name)
    if not verified and not json_out:
        err.print(
            f"[yellow]note:[/yellow] {label} has no passing verification report; run `m7b verify` to bind it "
            "to its magnet and publisher",
            highlight=False,
        )
    with progress_bars(enabled=not json_out) as progress:
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
    if json_out:
        emit_json(doc)
        return
    table = Table(title=f"{label} → {result.layout} ({result.out})")
    table.add_column("file")
    table.add_column("sha256")
    for fname, digest in result.files.items():
        table.add_row(fname, digest)
    out.print(table)
    for note in result.notes:
        err.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    out.print(
        f"{result.tensors} tensors ({result.tensor_bytes / 1e6:,.1f} MB) written and checked bit for bit in "
        f"{result.seconds:.1f} s; hashes in {result.out / 'SHA256SUMS'}",
        highlight=False,
    )


def _shard_size(text: str) -> int | str:
    return int(text) if text.isdigit() else text
