"""Torrent metadata as m7b sees it: the name, info-hashes, file layout, trackers and web seeds.

Every path a torrent names is checked to stay inside the folder it will be written to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import libtorrent as lt

from m7b.errors import InvalidInputError, NotFoundError, UnsafeError

NO_V2 = "0" * 64
NO_V1 = "0" * 40


@dataclass(frozen=True)
class TorrentFile:
    path: str  # relative to the torrent's folder (the torrent name is not included)
    size: int
    pad: bool = False


@dataclass(frozen=True)
class TorrentMeta:
    name: str
    info_hash_v1: str | None
    info_hash_v2: str | None
    piece_length: int
    num_pieces: int
    files: tuple[TorrentFile, ...]
    trackers: tuple[str, ...]
    web_seeds: tuple[str, ...]

    @property
    def info_hash(self) -> str:
        """The hash that names this torrent in the store: v1 when present (as magnets use), else v2."""
        return self.info_hash_v1 or self.info_hash_v2 or ""

    @property
    def data_files(self) -> tuple[TorrentFile, ...]:
        return tuple(f for f in self.files if not f.pad)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.data_files)


def safe_relative_path(torrent_path: str, name: str) -> str:
    """The path of a torrent file inside its folder, refusing anything that could land outside it."""
    if "\\" in torrent_path or "\x00" in torrent_path:
        raise UnsafeError(f"torrent file path {torrent_path!r} contains a backslash or NUL: refused")
    p = PurePosixPath(torrent_path)
    if p.is_absolute() or any(part in ("..", "") for part in p.parts):
        raise UnsafeError(f"torrent file path {torrent_path!r} escapes the download folder: refused, nothing written")
    parts = p.parts
    if parts == (name,):  # a single-file torrent
        return name
    if parts and parts[0] == name:
        parts = parts[1:]
    if not parts:
        raise UnsafeError(f"torrent file path {torrent_path!r} names no file: refused")
    return "/".join(parts)


def check_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise UnsafeError(f"torrent name {name!r} is not a plain folder name: refused, nothing written")
    return name


def _hex_or_none(value: Any, empty: str) -> str | None:
    text = str(value)
    return None if text == empty else text


def meta_from_info(ti: lt.torrent_info, raw: dict[bytes, Any] | None = None) -> TorrentMeta:
    """Read a libtorrent torrent_info (and, when known, the .torrent's top-level dict for trackers/web seeds)."""
    name = check_name(ti.name())
    layout = ti.layout()
    files = []
    for i in range(layout.num_files()):
        pad = bool(layout.file_flags(i) & lt.file_storage.flag_pad_file)
        if layout.file_flags(i) & lt.file_storage.flag_symlink:
            raise UnsafeError(f"torrent file {layout.file_path(i)!r} is a symlink: refused, nothing written")
        path = layout.file_path(i) if pad else safe_relative_path(layout.file_path(i), name)
        files.append(TorrentFile(path=path, size=layout.file_size(i), pad=pad))
    raw = raw or {}
    trackers: list[str] = []
    if b"announce-list" in raw:
        trackers = [t.decode() for tier in raw[b"announce-list"] for t in tier]
    elif b"announce" in raw:
        trackers = [raw[b"announce"].decode()]
    seeds = raw.get(b"url-list", [])
    seeds = [seeds] if isinstance(seeds, bytes) else seeds
    hashes = ti.info_hashes()
    return TorrentMeta(
        name=name,
        info_hash_v1=_hex_or_none(hashes.v1, NO_V1) if hashes.has_v1() else None,
        info_hash_v2=_hex_or_none(hashes.v2, NO_V2) if hashes.has_v2() else None,
        piece_length=ti.piece_length(),
        num_pieces=ti.num_pieces(),
        files=tuple(files),
        trackers=tuple(dict.fromkeys(trackers)),
        web_seeds=tuple(s.decode() for s in seeds),
    )


def parse_torrent(data: bytes, origin: str = "torrent") -> tuple[lt.torrent_info, TorrentMeta]:
    try:
        raw = lt.bdecode(data)
        if not isinstance(raw, dict) or b"info" not in raw:
            raise ValueError("no info dictionary")
        ti = lt.torrent_info(raw)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise InvalidInputError(f"{origin} is not a valid .torrent file ({exc}); expected bencoded metadata") from exc
    return ti, meta_from_info(ti, raw)


def load_torrent(path: Path) -> tuple[lt.torrent_info, TorrentMeta]:
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"torrent file {path} not found")
    return parse_torrent(path.read_bytes(), str(path))
