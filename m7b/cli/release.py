"""`m7b release ...`: the publisher's side — synthetic releases for tests, torrents and manifests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from .options import JsonOption, SignKeyOption, signing_key
from .render import err, progress_bars, show


def synth(
    out: Annotated[Path, typer.Argument(metavar="DIR", help="Folder to create (must not exist, or be empty).")],
    preset: Annotated[
        str,
        typer.Option(
            metavar="PRESET",
            help="Size preset: tiny, small, bench-cpu, bench-2g, mistral-7b; mixture of experts: mixtral-tiny, "
            "mixtral-small, mixtral-8x7b.",
        ),
    ] = "tiny",
    seed: Annotated[int, typer.Option(metavar="N", help="Random seed; the same seed gives byte-identical files.")] = 0,
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE", help="tokenizer.model to ship (default: the real one from the mistral-common package)."
        ),
    ] = None,
    checkpoint: Annotated[
        str,
        typer.Option(
            metavar="pth|safetensors",
            help="The checkpoint it ships: consolidated.00.pth (Mistral 7B, Mixtral 8x7B) or "
            "consolidated.safetensors (Mixtral 8x22B and later).",
        ),
    ] = "pth",
    json_out: JsonOption = False,
) -> None:
    """Write a synthetic release laid out exactly like Mistral's torrents (random bf16 weights, real tokenizer)."""
    from m7b.synth import synthesize

    with progress_bars(enabled=not json_out) as progress:
        made = synthesize(out, preset, seed, tokenizer=tokenizer, checkpoint_format=checkpoint, progress=progress)
    doc = {
        "path": str(made.path),
        "preset": made.preset,
        "seed": made.seed,
        "parameters": made.architecture.parameter_count(),
        "checkpoint_tensor_bytes": made.checkpoint_bytes,
        "params": made.architecture.to_params(),
    }
    show(
        doc,
        json_out,
        lambda d: err.print(
            f"wrote synthetic release [bold]{d['path']}[/bold] (preset {preset}, seed {seed}, "
            f"{d['parameters']:,} parameters)"
        ),
    )


def _write_output(path: Path, data: bytes, force: bool) -> None:
    from m7b.atomic import write_bytes
    from m7b.errors import StorageError
    from m7b.owned import refuse_link

    refuse_link(path)  # never read nor replaced through a link (exit 6)
    if path.exists() and path.read_bytes() != data and not force:
        raise StorageError(f"{path} exists with other content: pass --force to replace it, or choose --out")
    write_bytes(path, data)


@contextlib.contextmanager
def _inspection_hint(*kinds: type[Exception]) -> Iterator[None]:
    """A refused checkpoint's error, with the override named (library messages never name flags)."""
    try:
        yield
    except kinds as exc:
        raise type(exc)(f"{exc}. Nothing was written; to publish it anyway, pass --no-inspect") from exc


def create(
    folder: Annotated[
        Path, typer.Argument(metavar="DIR", help="The release folder; its name becomes the torrent's name.")
    ],
    tracker: Annotated[
        list[str] | None, typer.Option("--tracker", metavar="URL", help="Tracker URL (repeatable, one tier each).")
    ] = None,
    web_seed: Annotated[
        list[str] | None, typer.Option("--web-seed", metavar="URL", help="BEP 19 web seed URL (repeatable).")
    ] = None,
    hybrid: Annotated[bool, typer.Option(help="Make a v1+v2 hybrid torrent (default: v1, like the original).")] = False,
    piece_size: Annotated[
        str | None, typer.Option(metavar="SIZE", help="Piece size, e.g. 4M (default: libtorrent's choice).")
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(metavar="NAME", help="Release name for the manifest (default: folder name, lowercased)."),
    ] = None,
    title: Annotated[str | None, typer.Option(metavar="TEXT", help="Human title (default: the folder name).")] = None,
    publisher: Annotated[str, typer.Option(metavar="TEXT", help="Who vouches for this release.")] = "unknown",
    license_id: Annotated[str, typer.Option("--license", metavar="SPDX", help="SPDX license id.")] = "Apache-2.0",
    date: Annotated[
        str | None, typer.Option(metavar="YYYY-MM-DD", help="Release date, YYYY-MM-DD (default: absent).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="Where to write NAME.torrent and NAME.toml (default: the folder's parent)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace existing output files with other content.")] = False,
    no_inspect: Annotated[
        bool,
        typer.Option(
            "--no-inspect",
            help="Publish without inspecting the checkpoint (pickle allowlist, tensors owning their bytes, shapes "
            "against params.json): only for a publisher who knows why m7b refuses it.",
        ),
    ] = False,
    sign_key: SignKeyOption = None,
    publisher_key: Annotated[
        list[str] | None,
        typer.Option(
            "--publisher-key",
            metavar="FILE|sha256:HEX",
            help="Another key the manifest names as the publisher's (repeatable): a PEM file or a fingerprint.",
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Make a deterministic .torrent, print its magnet, and write a manifest with size/sha256/md5 of every file;
    with --sign-key also DIR.sig, an OMS signature over exactly the release's files (its key named in the manifest)."""
    import datetime as dt

    from m7b.errors import InvalidInputError, MismatchError, UnsafeError
    from m7b.manifests.writer import manifest_to_toml
    from m7b.mirror.create import HYBRID_CAVEATS, create_release, parse_piece_size

    try:
        release_date = dt.date.fromisoformat(date) if date else None
    except ValueError as exc:
        raise InvalidInputError(f"--date {date!r}: expected YYYY-MM-DD") from exc
    key = signing_key(sign_key) if sign_key is not None else None
    named = [_named_key(text) for text in publisher_key or ()]
    with progress_bars(enabled=not json_out) as progress, _inspection_hint(MismatchError, UnsafeError):
        made = create_release(
            folder,
            trackers=tracker or (),
            web_seeds=web_seed or (),
            hybrid=hybrid,
            piece_size=parse_piece_size(piece_size),
            manifest_name=name,
            title=title,
            publisher=publisher,
            license_id=license_id,
            release_date=release_date,
            progress=progress,
            inspect=not no_inspect,
            sign_key=key,
            signing_keys=named,
        )
    from m7b.atomic import make_dirs

    out_dir = make_dirs(out or folder.resolve().parent)
    torrent_path = out_dir / f"{made.meta.name}.torrent"
    # both named after the torrent (the folder), so the resolver finds them beside it whatever --name says
    manifest_path = out_dir / f"{made.meta.name}.toml"
    _write_output(torrent_path, made.torrent, force)
    _write_output(manifest_path, manifest_to_toml(made.manifest).encode(), force)
    signature_path = out_dir / f"{made.meta.name}.sig" if made.signature is not None else None
    if signature_path is not None and made.signature is not None:
        _write_output(signature_path, made.signature, True)  # ECDSA signatures differ each time: always replaced
    doc = {
        "magnet": made.magnet,
        "info_hash_v1": made.meta.info_hash_v1,
        "info_hash_v2": made.meta.info_hash_v2,
        "name": made.meta.name,
        "piece_length": made.meta.piece_length,
        "pieces": made.meta.num_pieces,
        "total_size": made.meta.total_size,
        "torrent": str(torrent_path),
        "manifest": str(manifest_path),
        "signature": str(signature_path) if signature_path else None,
        "signing_keys": list(made.manifest.signing_keys),
        "warnings": list(HYBRID_CAVEATS.values()) if hybrid else [],
    }
    if hybrid and not json_out:
        for caveat in HYBRID_CAVEATS.values():
            err.print(f"[yellow]note:[/yellow] {caveat}", highlight=False)
    show(doc, json_out, _print_created)


def _named_key(text: str) -> str:
    """A `--publisher-key`: a fingerprint as given, or the PEM of a public key file."""
    from m7b.verify.signature import load_public_key, parse_fingerprint, public_pem

    named = parse_fingerprint(text)
    return f"sha256:{named}" if named else public_pem(load_public_key(Path(text)).key)


def _print_created(doc: dict[str, Any]) -> None:
    err.print(f"torrent: {doc['torrent']} ({doc['pieces']} pieces of {doc['piece_length']:,} bytes)")
    err.print(f"manifest: {doc['manifest']}")
    if doc.get("signature"):
        err.print(f"signature: {doc['signature']}")
    typer.echo(doc["magnet"])


def sign(
    target: Annotated[
        str,
        typer.Argument(metavar="NAME|DIR", help="A release in the store (see `m7b list`) or a release folder."),
    ],
    key: Annotated[
        Path,
        typer.Option(
            "--key",
            metavar="KEY.pem",
            help="EC private key (PEM); an encrypted key's passphrase is asked on a terminal, else read from "
            "M7B_SIGN_PASSPHRASE.",
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE", help="Where to write the signature (default: the store's copy, else DIR.sig beside DIR)."
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing signature file.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Verify a release and, if it verifies, sign it (OMS): you vouch for exactly the files verify read."""
    from m7b.errors import StorageError
    from m7b.verify.release import sign_release

    from .options import note

    private = signing_key(key)
    with progress_bars(enabled=not json_out) as progress:
        try:
            signed = sign_release(target, private, out=out, replace_existing=force, progress=progress, on_note=note)
        except StorageError as exc:
            raise StorageError(str(exc).replace("replace_existing (force)", "--force")) from exc
    show(
        signed.to_json(),
        json_out,
        lambda d: err.print(
            f"signed {len(d['covered'])} files by sha256:{d['signer']}: {d['signature']}", highlight=False
        ),
    )
