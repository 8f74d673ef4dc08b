"""`m7b verify` and `m7b convert`: prove a release is what its magnet and publisher named; convert it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from m7b.errors import NotFoundError
from m7b.sizes import format_bytes, format_rate
from m7b.store import Store

from .options import (
    JsonOption,
    PublicKeyOption,
    RequireSignatureOption,
    SignatureOption,
    SignKeyOption,
    TargetArg,
    fail_after_document,
    note,
    signing_key,
)
from .render import err, out, progress_bars, report_lock_wait, show

_STYLE = {
    "ok": "green",
    "note": "cyan",
    "unvouched": "yellow",
    "invalid": "yellow",
    "mismatch": "red",
    "missing": "yellow",
    "unsafe": "bold red",
}


def verify(
    target: TargetArg = None,
    manifest: Annotated[
        Path | None, typer.Option(metavar="FILE", help="Manifest .toml to check against (default: the release's own).")
    ] = None,
    torrent: Annotated[
        Path | None, typer.Option(metavar="FILE", help=".torrent metadata (default: the store's, by info-hash).")
    ] = None,
    signature: SignatureOption = None,
    public_key: PublicKeyOption = None,
    require_signature: RequireSignatureOption = False,
    json_out: JsonOption = False,
) -> None:
    """Prove a release is what its magnet and publisher named: torrent pieces, manifest digests, license
    evidence, and a checkpoint inspected before anything is unpickled; and who signed it (OMS, against the
    manifest's keys or --public-key). A converted folder is checked against the store's record of converting it
    (or a signature by a key you trust), its layout and its source's tensors; one with neither is unvouched (exit 5)."""
    from m7b.verify.release import verify as verify_target

    with progress_bars(enabled=not json_out) as progress:
        verification = verify_target(
            target,
            manifest=manifest,
            torrent=torrent,
            signature=signature,
            public_keys=public_key or (),
            require_signature=require_signature,
            progress=progress,
            on_note=note,
        )
    show(verification.to_json(), json_out, _print_report)
    _fail_unless_ok(verification.report, json_out)


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
    fields = ("manifest", "torrent", "public_key", "signature", "require_signature")
    fail_after_document(error(message, fields=fields), json_out)


def _print_report(doc: dict[str, Any]) -> None:
    table = Table(title=escape(f"{doc['kind']} {doc['name'] or ''} ({doc['root']})"))
    for col in ("check", "status", "finding"):
        table.add_column(col, overflow="fold")
    for f in doc["findings"]:
        style = _STYLE.get(f["status"], "")
        # findings name files, keys and manifest text from outside: shown as written, never read as rich markup
        table.add_row(escape(f["check"]), f"[{style}]{f['status']}[/{style}]", escape(f["message"]))
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
    signed = doc.get("signature")
    if signed:
        if signed["verdict"] == "signed":
            said = f"signed by sha256:{signed['signer']} ({len(signed['covered'])} files covered)"
        else:
            said = signed["verdict"] + (f" ({signed['signature']})" if signed.get("signature") else "")
        out.print(f"signature: {said}", highlight=False)
    if doc.get("report_path"):
        out.print(f"report: {doc['report_path']}", highlight=False)


def convert(
    target: TargetArg = None,
    to: Annotated[
        str,
        typer.Option(
            "--to",
            metavar="native|hf|gguf",
            help="native (consolidated.safetensors), hf (Hugging Face layout) or gguf (llama.cpp, Ollama).",
        ),
    ] = "native",
    gguf_type: Annotated[
        str | None,
        typer.Option(
            "--type",
            metavar="bf16|f16|q8_0|q4_0",
            help="gguf only: the tensors' type (default bf16, the release's own; q8_0, q4_0 as llama-quantize).",
        ),
    ] = None,
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
    sign_key: SignKeyOption = None,
    json_out: JsonOption = False,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="If another command is writing this output, fail at once (exit 8).")
    ] = False,
) -> None:
    """Convert a release to safetensors: streaming, deterministic, atomic, every tensor checked bit for bit; with
    provenance.json (what it came from, every output's sha256), signed (provenance.sig, OMS) with --sign-key."""
    from m7b.verify.convert import plan_convert, run_convert

    if target is None:
        raise NotFoundError("name a release (see `m7b list`) or a folder to convert")
    key = signing_key(sign_key) if sign_key is not None else None
    store = Store.from_env()
    plan = plan_convert(target, _layout(to, gguf_type), store, out=out_dir, on_note=note)
    if not plan.verified and not json_out:
        err.print(
            f"[yellow]note:[/yellow] {plan.label} has no passing verification report; run `m7b verify` to bind it "
            "to its magnet and publisher",
            highlight=False,
        )
    with progress_bars(enabled=not json_out) as progress:
        conversion = run_convert(
            plan,
            store,
            max_shard_size=_shard_size(max_shard_size),
            wait=not no_wait,
            on_wait=lambda holder: report_lock_wait(holder, json_out),
            progress=progress,
            sign_key=key,
        )
    show(conversion.to_json(), json_out, lambda _: _print_conversion(plan.label, conversion.result))


def _print_conversion(label: str, result: Any) -> None:
    table = Table(title=f"{label} → {result.layout} ({result.out})")
    table.add_column("file")
    table.add_column("sha256")
    for fname, digest in result.files.items():
        table.add_row(fname, digest)
    out.print(table)
    for left_out in result.notes:
        err.print(f"[yellow]note:[/yellow] {left_out}", highlight=False)
    checked = "written and read back" if result.gguf else "written and checked bit for bit"
    out.print(
        f"{result.tensors} tensors ({format_bytes(result.tensor_bytes)}) {checked} in "
        f"{result.seconds:.1f} s; hashes in {result.out / 'SHA256SUMS'}",
        highlight=False,
    )
    if result.gguf:
        types = ", ".join(f"{n} {t}" for t, n in result.gguf["tensor_types"].items())
        out.print(
            f"gguf: {result.gguf['file']} ({types}); Ollama: `ollama create {label} -f {result.out / 'Modelfile'}`",
            highlight=False,
        )
    from m7b.verify.provenance import CONVERTED_SIGNATURE, PROVENANCE_FILE

    signed = result.out / CONVERTED_SIGNATURE
    out.print(
        f"provenance: {result.out / PROVENANCE_FILE}" + (f"; signed: {signed}" if signed.is_file() else ""),
        highlight=False,
    )


def _layout(to: str, gguf_type: str | None) -> str:
    """--to and --type as the library's layout name (gguf-bf16, gguf-q8_0, ...)."""
    from m7b.errors import InvalidInputError
    from m7b.store import GGUF_LAYOUTS, LAYOUTS

    if to == "gguf":
        layout = f"gguf-{(gguf_type or 'bf16').lower()}"
        if layout not in GGUF_LAYOUTS:
            types = ", ".join(lay.removeprefix("gguf-") for lay in GGUF_LAYOUTS)
            raise InvalidInputError(f"--type {gguf_type!r}: expected one of {types}", field="gguf_type")
        return layout
    if gguf_type is not None:
        raise InvalidInputError(f"--type is for --to gguf; --to {to} writes the release's own dtype", field="gguf_type")
    if to not in LAYOUTS or to in GGUF_LAYOUTS:
        raise InvalidInputError(f"--to {to!r}: expected native, hf or gguf", field="to")
    return to


def _shard_size(text: str) -> int:
    from m7b.sizes import parse_size

    return parse_size(text, "--max-shard-size", "bytes or a size like 5GB or 500MB", minimum=1)
