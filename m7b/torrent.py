"""Torrent metadata as m7b sees it: the one record of a .torrent and the one reader that builds it.

Mirror fetches and seeds by it, verify proves pieces with it, so it lives below both. libtorrent parses the
bencoding and the info dictionary; m7b then refuses what libtorrent would silently rewrite or what a user would
not expect: a path that could escape the folder, a symlink, a tracker or web seed that is not text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m7b.errors import InvalidInputError, NotFoundError, UnsafeError
from m7b.magnet import InfoHashes, preferred_hash
from m7b.paths import path_problem, safe_name, safe_relative_path

if TYPE_CHECKING:
    import libtorrent as lt

_ZERO32 = bytes(32)
_DOWNLOAD_FOLDER = "the download folder"


@dataclass(frozen=True)
class TorrentFile:
    """One entry of the torrent's file list, in torrent order (pad files included)."""

    path: str  # relative to the release folder (the torrent's name is not included)
    size: int
    pad: bool = False
    offset: int = 0  # where the file starts in the torrent's byte stream (v1 pieces span file boundaries)
    index: int = 0
    v2_root: bytes | None = None  # BEP 52 pieces root, None for a pad file, an empty file or a v1-only torrent


@dataclass(frozen=True)
class TorrentMeta(InfoHashes):
    source: str  # the .torrent file, or "metadata" when it came from peers
    name: str
    info_hash_v1: str | None
    info_hash_v2: str | None
    piece_length: int
    num_pieces: int
    files: tuple[TorrentFile, ...]
    trackers: tuple[str, ...] = ()
    web_seeds: tuple[str, ...] = ()
    v1_hashes: tuple[bytes, ...] = ()
    v2_layers: dict[bytes, bytes] = field(default_factory=dict)  # pieces root -> concatenated piece hashes

    @property
    def data_files(self) -> tuple[TorrentFile, ...]:
        return tuple(f for f in self.files if not f.pad)

    @property
    def total_size(self) -> int:
        """Bytes of the release's files (pad files, which are never written, not counted)."""
        return sum(f.size for f in self.data_files)


def release_path(torrent_path: str, name: str) -> str:
    """The path of a torrent file inside its release folder (the torrent's name stripped), refusing escapes."""
    safe_relative_path(torrent_path, "torrent file path", _DOWNLOAD_FOLDER)
    return _strip_name(torrent_path, name)


def _strip_name(torrent_path: str, name: str) -> str:
    parts = torrent_path.split("/")
    if len(parts) > 1 and parts[0] == name:  # a multi-file torrent; a single-file one is just `name`
        parts = parts[1:]
    return "/".join(parts)


def _check_component(part: Any, where: str) -> None:
    text = part.decode("utf-8", "replace") if isinstance(part, bytes) else str(part)
    if "/" in text or path_problem(text) is not None:
        raise UnsafeError(
            f"torrent metadata names the path element {text!r} in {where}: it could escape the "
            "download folder, so the torrent was refused and nothing was written"
        )


def _walk_file_tree(tree: dict, where: str) -> None:
    for key, value in tree.items():
        if key == b"":  # a file entry in a v2 file tree
            continue
        _check_component(key, where)
        if isinstance(value, dict):
            _walk_file_tree(value, where)


def check_info_paths(info_section: bytes) -> None:
    """Check the raw info dictionary (libtorrent silently rewrites unsafe paths; m7b refuses them)."""
    import libtorrent as lt

    info: object = lt.bdecode(info_section)  # checked below: a dict (of bytes keys) or refused
    if not isinstance(info, dict):
        raise UnsafeError("torrent metadata is not a dictionary: refused")
    _check_component(info.get(b"name", b""), "the torrent name")
    entries = info.get(b"files", [])
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        attr = entry.get(b"attr", b"")
        if isinstance(attr, bytes) and b"l" in attr:
            raise UnsafeError("torrent metadata holds a symlink: refused, nothing written")
        if isinstance(attr, bytes) and b"p" in attr:
            continue
        path = entry.get(b"path.utf-8", entry.get(b"path", []))
        for part in path if isinstance(path, list) else [path]:
            _check_component(part, "a file path")
    if isinstance(info.get(b"file tree"), dict):
        _walk_file_tree(info[b"file tree"], "the v2 file tree")


def _text(value: Any, what: str, origin: str) -> str:
    if not isinstance(value, bytes):
        raise InvalidInputError(f"{origin}: {what} is {type(value).__name__}, expected a string (a URL)")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{origin}: {what} is not UTF-8 text ({exc.reason}); expected a URL") from exc


def _texts(value: Any, what: str, origin: str) -> list[str]:
    """A string or a list of strings (BEP 19's url-list is either)."""
    items = value if isinstance(value, list) else [value]
    return [_text(item, f"{what}[{i}]" if isinstance(value, list) else what, origin) for i, item in enumerate(items)]


def _trackers(raw: dict[bytes, Any], origin: str) -> list[str]:
    if b"announce-list" in raw:
        tiers = raw[b"announce-list"]
        if not isinstance(tiers, list) or not all(isinstance(tier, list) for tier in tiers):
            raise InvalidInputError(f"{origin}: announce-list is not a list of lists of tracker URLs (BEP 12)")
        return [url for i, tier in enumerate(tiers) for url in _texts(tier, f"announce-list[{i}]", origin)]
    if b"announce" in raw:
        return [_text(raw[b"announce"], "announce", origin)]
    return []


def _piece_layers(raw: dict[bytes, Any], origin: str) -> dict[bytes, bytes]:
    layers = raw.get(b"piece layers", {})
    if not isinstance(layers, dict) or not all(isinstance(v, bytes) for v in layers.values()):
        raise InvalidInputError(f"{origin}: 'piece layers' is not a map of pieces roots to piece hashes (BEP 52)")
    return {bytes(k): bytes(v) for k, v in layers.items()}


def _hex_or_none(value: Any, present: bool) -> str | None:
    text = str(value)
    return text if present and text.strip("0") else None


def hashes_of(hashes: lt.info_hash_t) -> tuple[str | None, str | None]:
    """libtorrent's info-hashes as (v1, v2) hex, None for a version the torrent lacks."""
    return _hex_or_none(hashes.v1, hashes.has_v1()), _hex_or_none(hashes.v2, hashes.has_v2())


def store_hash(hashes: lt.info_hash_t) -> str:
    """The hash the store names a torrent by (see `preferred_hash`)."""
    return preferred_hash(*hashes_of(hashes))


def meta_from_info(ti: lt.torrent_info, raw: dict[bytes, Any] | None = None, source: str = "metadata") -> TorrentMeta:
    """The record of a libtorrent torrent_info (and, when known, the .torrent's top-level dict: trackers, web
    seeds, v2 piece layers). Every path is checked to stay inside the release folder."""
    import libtorrent as lt

    check_info_paths(ti.info_section())
    name = safe_name(ti.name(), "torrent name", _DOWNLOAD_FOLDER)
    hashes = ti.info_hashes()
    has_v2 = hashes.has_v2()
    layout = ti.layout()
    files = []
    for i in range(layout.num_files()):
        flags = int(layout.file_flags(i))
        if flags & int(lt.file_storage.flag_symlink):
            raise UnsafeError(f"torrent file {layout.file_path(i)!r} is a symlink: refused, nothing written")
        pad = bool(flags & int(lt.file_storage.flag_pad_file))
        path = layout.file_path(i)
        path = _strip_name(path, name) if pad else release_path(path, name)
        root = bytes.fromhex(str(layout.root(i))) if has_v2 and not pad else None
        files.append(
            TorrentFile(
                path=path,
                size=layout.file_size(i),
                pad=pad,
                offset=layout.file_offset(i),
                index=i,
                v2_root=root if root and root != _ZERO32 else None,
            )
        )
    raw = raw or {}
    return TorrentMeta(
        source=source,
        name=name,
        info_hash_v1=hashes_of(hashes)[0],
        info_hash_v2=hashes_of(hashes)[1],
        piece_length=ti.piece_length(),
        num_pieces=ti.num_pieces(),
        files=tuple(files),
        trackers=tuple(dict.fromkeys(_trackers(raw, source))),
        web_seeds=tuple(_texts(raw[b"url-list"], "url-list", source)) if b"url-list" in raw else (),
        v1_hashes=tuple(ti.hash_for_piece(i) for i in range(ti.num_pieces())) if hashes.has_v1() else (),
        v2_layers=_piece_layers(raw, source) if has_v2 else {},
    )


def parse_torrent(data: bytes, origin: str = "torrent") -> tuple[lt.torrent_info, TorrentMeta]:
    """Parse .torrent bytes: libtorrent's torrent_info (to add to a session) and m7b's record of it."""
    import libtorrent as lt

    try:
        raw: object = lt.bdecode(data)
        if not isinstance(raw, dict) or b"info" not in raw:
            raise ValueError("no info dictionary")
        ti = lt.torrent_info(raw)  # type: ignore[call-overload]  # stubs want create_torrent's dict; any bdecoded works
    except (RuntimeError, ValueError, TypeError) as exc:
        raise InvalidInputError(f"{origin} is not a valid .torrent file ({exc}); expected bencoded metadata") from exc
    return ti, meta_from_info(ti, raw, origin)


def load_torrent(path: Path) -> tuple[lt.torrent_info, TorrentMeta]:
    """Read a .torrent file; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"torrent file {path} not found: fetch the metadata first (`m7b fetch`)")
    return parse_torrent(path.read_bytes(), str(path))
