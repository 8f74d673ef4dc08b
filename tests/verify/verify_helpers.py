"""Builders for verify's tests: torrents made with libtorrent, manifests, and bad checkpoints."""

from __future__ import annotations

import hashlib
import io
import pickle
import shutil
import warnings
import zipfile
from pathlib import Path

from m7b.manifests.architecture import load_params
from m7b.manifests.schema import CheckpointFacts, FileFacts, Manifest, TorrentFacts
from m7b.manifests.writer import manifest_to_toml
from m7b.synth import RELEASE_FILES

PIECE = 64 << 10  # small pieces: many pieces per file, pieces spanning file boundaries


def make_torrent(
    root: Path,
    out: Path,
    *,
    piece_size: int = PIECE,
    hybrid: bool = False,
    v2_only: bool = False,
    files: tuple[str, ...] = RELEASE_FILES,
) -> str:
    """A torrent of `files` in `root` (multi-file, named after the folder): v1 (default), hybrid or v2-only;
    returns its v1 info-hash, or the full v2 one (64 hex) for v2-only."""
    import libtorrent as lt

    fs = lt.file_storage()
    for name in files:
        fs.add_file(f"{root.name}/{name}", (root / name).stat().st_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        flags = lt.create_torrent.v2_only if v2_only else 0 if hybrid else lt.create_torrent.v1_only
        ct = lt.create_torrent(fs, piece_size, flags)
        lt.set_piece_hashes(ct, str(root.parent))
        data = lt.bencode(ct.generate())
        hashes = lt.torrent_info(lt.bdecode(data)).info_hashes()
        ih = str(hashes.v2) if v2_only else str(hashes.v1)
    out.write_bytes(data)
    return ih


def make_manifest(
    root: Path,
    name: str,
    info_hash: str | None,
    *,
    sha256: bool = True,
    md5: bool = True,
    license_id: str = "Apache-2.0",
    info_hash_v2: str | None = None,
) -> Manifest:
    files = []
    for f in RELEASE_FILES:
        data = (root / f).read_bytes()
        files.append(
            FileFacts(
                f,
                len(data),
                hashlib.sha256(data).hexdigest() if sha256 else None,
                hashlib.md5(data).hexdigest() if md5 else None,
            )
        )
    arch = load_params(root / "params.json")
    sources = {"release": "test fixture", "architecture": "test params.json", "checkpoint": "test"}
    if info_hash or info_hash_v2:
        sources["torrent"] = "test torrent"
    sources.update({f"files.{f.path}": "test digests" for f in files})
    return Manifest(
        name=name,
        title=f"Test {name}",
        publisher="m7b tests",
        license=license_id,
        torrent=TorrentFacts(name=root.name, info_hash_v1=info_hash, info_hash_v2=info_hash_v2, files_complete=True)
        if info_hash or info_hash_v2
        else TorrentFacts(),
        files=tuple(files),
        architecture=arch,
        checkpoint=CheckpointFacts(
            tensors=len(arch.tensor_shapes()), parameters=arch.parameter_count(), dtype="bfloat16"
        ),
        sources=sources,
    )


def install_release(
    home: Path, src: Path, name: str, *, hybrid: bool = False, v2_only: bool = False, **manifest_kw
) -> Path:
    """Put a copy of `src` into the store as release `name`, with its torrent and manifest; return its folder."""
    root = home / "releases" / name
    shutil.copytree(src, root)
    (home / "torrents").mkdir(parents=True, exist_ok=True)
    tmp = home / "t.torrent"
    ih = make_torrent(root, tmp, hybrid=hybrid, v2_only=v2_only)
    tmp.rename(home / "torrents" / f"{ih}.torrent")
    (home / "manifests").mkdir(parents=True, exist_ok=True)
    manifest = make_manifest(root, name, None if v2_only else ih, info_hash_v2=ih if v2_only else None, **manifest_kw)
    (home / "manifests" / f"{name}.toml").write_text(manifest_to_toml(manifest))
    return root


class Hostile:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        import os

        return (os.system, (f"touch {self.marker}",))


def rewrite_zip(path: Path, replace: dict[str, bytes | None], rename: dict[str, str] | None = None) -> None:
    """Rewrite a checkpoint zip with some members replaced (None drops them) or renamed."""
    buf = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            name = info.filename
            if name in replace:
                if replace[name] is not None:
                    dst.writestr(name, replace[name])
                continue
            dst.writestr((rename or {}).get(name, name), src.read(name))
    path.write_bytes(buf.getvalue())


def hostile_pickle(marker: Path, protocol: int) -> bytes:
    return pickle.dumps({"tok_embeddings.weight": Hostile(marker)}, protocol=protocol)
