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


def make_torrent(root: Path, out: Path, *, piece_size: int = PIECE, hybrid: bool = False,
                 files: tuple[str, ...] = RELEASE_FILES) -> str:
    """A torrent of `files` in `root` (multi-file, named after the folder); returns its v1 info-hash."""
    import libtorrent as lt

    fs = lt.file_storage()
    for name in files:
        fs.add_file(f"{root.name}/{name}", (root / name).stat().st_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ct = lt.create_torrent(fs, piece_size, 0 if hybrid else lt.create_torrent.v1_only)
        lt.set_piece_hashes(ct, str(root.parent))
        data = lt.bencode(ct.generate())
        ih = str(lt.torrent_info(lt.bdecode(data)).info_hashes().v1)
    out.write_bytes(data)
    return ih


def make_manifest(root: Path, name: str, info_hash: str | None, *, sha256: bool = True, md5: bool = True,
                  license_id: str = "Apache-2.0") -> Manifest:
    files = []
    for f in RELEASE_FILES:
        data = (root / f).read_bytes()
        files.append(FileFacts(f, len(data), hashlib.sha256(data).hexdigest() if sha256 else None,
                               hashlib.md5(data).hexdigest() if md5 else None))
    arch = load_params(root / "params.json")
    sources = {"release": "test fixture", "architecture": "test params.json", "checkpoint": "test"}
    if info_hash:
        sources["torrent"] = "test torrent"
    sources.update({f"files.{f.path}": "test digests" for f in files})
    return Manifest(
        name=name, title=f"Test {name}", publisher="m7b tests", license=license_id,
        torrent=TorrentFacts(name=root.name, info_hash_v1=info_hash, files_complete=True) if info_hash
        else TorrentFacts(),
        files=tuple(files), architecture=arch,
        checkpoint=CheckpointFacts(tensors=len(arch.tensor_shapes()), parameters=arch.parameter_count(),
                                   dtype="bfloat16"),
        sources=sources,
    )


def install_release(home: Path, src: Path, name: str, *, hybrid: bool = False, **manifest_kw) -> Path:
    """Put a copy of `src` into the store as release `name`, with its torrent and manifest; return its folder."""
    root = home / "releases" / name
    shutil.copytree(src, root)
    (home / "torrents").mkdir(parents=True, exist_ok=True)
    tmp = home / "t.torrent"
    ih = make_torrent(root, tmp, hybrid=hybrid)
    tmp.rename(home / "torrents" / f"{ih}.torrent")
    (home / "manifests").mkdir(parents=True, exist_ok=True)
    (home / "manifests" / f"{name}.toml").write_text(manifest_to_toml(make_manifest(root, name, ih, **manifest_kw)))
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
