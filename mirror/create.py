"""The publisher's side: a deterministic .torrent, its magnet, and a manifest for a release folder."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import libtorrent as lt
from cryptography.hazmat.primitives.asymmetric import ec

from m7b.errors import InvalidInputError, NotFoundError
from m7b.manifests.architecture import Architecture, load_params
from m7b.manifests.loader import NAME_RE, parse_manifest_text
from m7b.manifests.schema import FileFacts, Manifest, TorrentFacts
from m7b.manifests.writer import manifest_to_toml
from m7b.progress import ProgressCallback, ProgressEvent, ignore_progress
from m7b.sizes import SizeError, parse_size
from m7b.torrent import TorrentMeta, parse_torrent
from m7b.verify.check import inspect_release_checkpoints
from m7b.verify.signature import public_pem, sign_files

BLOCK = 8 << 20
MIN_PIECE = 16 << 10
MAX_PIECE = 128 << 20  # libtorrent's largest (256M: "invalid piece size"; 1T overflowed into exit 1)

# What other clients do with a v1+v2 hybrid torrent (tried on loopback, issue 12). libtorrent and qBittorrent
# handle it; these two do not, so a publisher who makes one is told.
HYBRID_CAVEATS: dict[str, str] = {
    "aria2c": "aria2c (1.36) computes a different info-hash for a hybrid torrent, so a tracker that lists the "
    "torrent's hashes refuses its announce and it finds no peers",
    "rtorrent": "rtorrent (0.9.8) writes the torrent's pad files into a .pad/ folder inside the release folder it "
    "downloads or seeds",
}


@dataclass(frozen=True)
class CreatedRelease:
    torrent: bytes
    meta: TorrentMeta
    magnet: str
    manifest: Manifest
    signature: bytes | None = None  # OMS over exactly the release's files (with `sign_key`), written as DIR.sig


def release_files(root: Path) -> list[str]:
    """Every regular file under `root`, as sorted relative POSIX paths; symlinks are refused."""
    if not root.is_dir():
        raise NotFoundError(f"release folder {root} not found (expected a folder holding the release files)")
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for d in dirnames:
            if (Path(dirpath) / d).is_symlink():
                raise InvalidInputError(f"{Path(dirpath) / d} is a symlink: a release holds only regular files")
        for f in filenames:
            p = Path(dirpath) / f
            if p.is_symlink() or not p.is_file():
                raise InvalidInputError(f"{p} is not a regular file: a release holds only regular files")
            found.append(p.relative_to(root).as_posix())
    if not found:
        raise InvalidInputError(f"release folder {root} is empty: nothing to publish")
    return sorted(found)


def parse_piece_size(text: str | None) -> int:
    """'0'/None = libtorrent's choice; else bytes with an optional K/M suffix, a power of two from 16 KiB to
    128 MiB (Mixtral 8x22B's 281 GB in 128 MiB pieces is 2,100 pieces)."""
    value = parse_size(text, "piece size", "bytes or a K/M suffix, e.g. 4M")
    if value and (value < MIN_PIECE or value > MAX_PIECE or value & (value - 1)):
        raise SizeError("piece size", str(text), f"a power of two from 16K to 128M, found {value:,} bytes")
    return value


def file_digests(path: Path, progress: ProgressCallback, done: int, total: int) -> tuple[int, str, str]:
    sha256, md5 = hashlib.sha256(), hashlib.md5()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK):
            sha256.update(block)
            md5.update(block)
            size += len(block)
            progress(ProgressEvent("hashing", done + size, total, item=path.name))
    return size, sha256.hexdigest(), md5.hexdigest()


def create_release(
    root: Path,
    *,
    trackers: Sequence[str] = (),
    web_seeds: Sequence[str] = (),
    hybrid: bool = False,
    piece_size: int = 0,
    manifest_name: str | None = None,
    title: str | None = None,
    publisher: str = "unknown",
    license_id: str = "Apache-2.0",
    release_date: dt.date | None = None,
    progress: ProgressCallback = ignore_progress,
    inspect: bool = True,
    sign_key: ec.EllipticCurvePrivateKey | None = None,
    signing_keys: Sequence[str] = (),
) -> CreatedRelease:
    """Make the .torrent (v1, or v1+v2 with `hybrid`), magnet and manifest for the release folder `root`.

    The same content and options always give the same bytes: no creation date, no creator, sorted files.
    With `inspect` (the default) every top-level `.pth` first passes verify's checkpoint inspection (UnsafeError,
    MismatchError otherwise, before anything is hashed or made): a publisher vouches only for what m7b would load.
    With `sign_key` the release's files (their sha256 from the same hashing) are signed (OMS) and the key's public
    half goes into the manifest's `[signing]`, with `signing_keys` (PEM or sha256:HEX) beside it.
    """
    root = Path(root).resolve()
    files = release_files(root)
    name = root.name
    manifest_name = manifest_name or name.lower()
    if not NAME_RE.match(manifest_name):
        raise InvalidInputError(
            f"release name {manifest_name!r}: expected lowercase letters, digits, '.', '_', '-' "
            "(pass another manifest_name)",
            field="manifest_name",
        )
    architecture = _architecture(root, files)
    if inspect:
        inspect_release_checkpoints(root, architecture)
    sizes = {f: (root / f).stat().st_size for f in files}
    total = sum(sizes.values())
    _check_loadable(  # the manifest without its digests: refused (a --title over the cap, 1,001 files) before hashing
        Manifest(
            name=manifest_name,
            title=title or name,
            publisher=publisher,
            license=license_id,
            torrent=TorrentFacts(name=name, trackers=tuple(trackers), web_seeds=tuple(web_seeds)),
            files=tuple(FileFacts(path=f, size=sizes[f]) for f in files),
            sources={"release": "-", "torrent": "-"} | {f"files.{f}": "-" for f in files},
        )
    )

    flags = 0 if hybrid else lt.create_torrent.v1_only
    ct = lt.create_torrent([lt.create_file_entry(f"{name}/{f}", sizes[f]) for f in files], piece_size, flags)
    ct.set_creation_date(0)
    for tier, url in enumerate(trackers):
        ct.add_tracker(url, tier)
    for url in web_seeds:
        ct.add_url_seed(url)
    num_pieces = ct.num_pieces()
    lt.set_piece_hashes(
        ct, str(root.parent), lambda i: progress(ProgressEvent("pieces", i + 1, num_pieces, item=name, unit="piece"))
    )
    torrent = lt.bencode(ct.generate())
    ti, meta = parse_torrent(torrent)
    magnet = lt.make_magnet_uri(ti)

    facts, done = [], 0
    for f in files:
        size, sha256, md5 = file_digests(root / f, progress, done, total)
        done += size
        facts.append(FileFacts(path=f, size=size, sha256=sha256, md5=md5))
    tool = f"m7b release create (libtorrent {lt.__version__})"
    sources = {
        "release": f"declared by the publisher ({publisher}) with {tool}",
        "torrent": f"made by {tool} from the release folder",
    }
    sources.update({f"files.{f.path}": f"hashed by {tool} from the published file" for f in facts})
    if architecture is not None:
        sources["architecture"] = "params.json in the release folder"
    keys = list(signing_keys)
    if sign_key is not None:
        keys.insert(0, public_pem(sign_key.public_key()))
    if keys:
        sources["signing"] = f"the publisher's signing keys ({publisher}), named to {tool}"
    manifest = Manifest(
        name=manifest_name,
        title=title or name,
        publisher=publisher,
        license=license_id,
        release_date=release_date,
        torrent=TorrentFacts(
            name=name,
            info_hash_v1=meta.info_hash_v1,
            info_hash_v2=meta.info_hash_v2,
            magnet=magnet,
            trackers=tuple(trackers),
            web_seeds=tuple(web_seeds),
            files_complete=True,
        ),
        files=tuple(facts),
        architecture=architecture,
        signing_keys=tuple(dict.fromkeys(keys)),
        sources=sources,
    )
    signature = sign_files(name, {f.path: f.sha256 for f in facts if f.sha256}, sign_key) if sign_key else None
    return CreatedRelease(torrent=torrent, meta=meta, magnet=magnet, manifest=manifest, signature=signature)


def _check_loadable(manifest: Manifest) -> None:
    """The manifest `create_release` would write passes the loader's bounds (one rule: the loader's), else
    InvalidInputError (exit 4) before anything is hashed or made."""
    try:
        parse_manifest_text(manifest_to_toml(manifest), f"the manifest of {manifest.name}")
    except InvalidInputError as exc:
        raise InvalidInputError(f"{exc}; m7b would not load that manifest, so nothing was made", **exc.data) from exc


def _architecture(root: Path, files: Sequence[str]) -> Architecture | None:
    """params.json's architecture (dense or a mixture of experts), when the release ships one."""
    return load_params(root / "params.json") if "params.json" in files else None
