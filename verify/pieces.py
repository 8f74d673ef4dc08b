"""The torrent's own proof: every v1 SHA-1 piece (pieces span file boundaries) and every v2 merkle piece.

Torrent metadata is `m7b.torrent`'s record; the hashing itself runs as lanes of `digest.read_stream`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeGuard

from m7b.torrent import TorrentMeta

from .digest import Hasher, ReadItem

V2_BLOCK = 16 << 10
_ZERO32 = bytes(32)


def read_items(plan: TorrentMeta, root: Path) -> list[ReadItem]:
    """The torrent's files in torrent order, as items of one read pass over `root` (pad files read as zeros)."""
    return [ReadItem(f.path, None if f.pad else root / f.path, f.size, f.index, f.size) for f in plan.files]


@dataclass
class V1PieceLane:
    """SHA-1 of each piece over the concatenation of every file (pad files included), in torrent order."""

    piece_length: int
    expected: tuple[bytes, ...]
    failed: list[int] = field(default_factory=list)  # complete pieces whose hash differs
    unchecked: list[int] = field(default_factory=list)  # pieces with bytes missing from disk
    checked: int = 0
    _pos: int = 0
    _hasher: Hasher | None = None
    _tainted: bool = False

    def begin(self, item: ReadItem) -> None:
        pass

    def update(self, item: ReadItem, offset: int, data: memoryview) -> None:
        if item.stream_length is None:
            return
        if offset + len(data) > item.stream_length:
            data = data[: max(0, item.stream_length - offset)]
        self._consume(data, len(data))

    def end(self, item: ReadItem, size: int) -> None:
        if item.stream_length is not None and size < item.stream_length:
            self._consume(None, item.stream_length - size)  # bytes that are not on disk

    def finish(self) -> None:
        if self._pos % self.piece_length:
            self._close_piece()

    def _consume(self, data: memoryview | None, n: int) -> None:
        done = 0
        while done < n:
            if self._hasher is None:
                self._hasher = hashlib.sha1()
                self._tainted = False
            take = min(n - done, self.piece_length - self._pos % self.piece_length)
            if data is None:
                self._tainted = True
            else:
                self._hasher.update(data[done : done + take])
            done += take
            self._pos += take
            if self._pos % self.piece_length == 0:
                self._close_piece()

    def _close_piece(self) -> None:
        index = (self._pos - 1) // self.piece_length
        digest = self._hasher.digest() if self._hasher is not None else b""
        if self._tainted:
            self.unchecked.append(index)
        elif index >= len(self.expected) or digest != self.expected[index]:
            self.failed.append(index)
        self.checked += 1
        self._hasher = None


def _all_known(leaves: list[bytes | None]) -> TypeGuard[list[bytes]]:
    """Whether every leaf was hashed (None: a block that is not on disk)."""
    return None not in leaves


def _merkle_root(leaves: list[bytes], count: int, pad: bytes = _ZERO32) -> bytes:
    """Root over `leaves` padded with `pad` hashes to `count` leaves (a power of two)."""
    layer = leaves + [pad] * (count - len(leaves))
    while len(layer) > 1:
        layer = [hashlib.sha256(layer[i] + layer[i + 1]).digest() for i in range(0, len(layer), 2)]
    return layer[0]


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclass
class V2PieceLane:
    """BEP 52: SHA-256 of each 16 KiB block of each file, merkle trees per piece and per file."""

    plan: TorrentMeta
    failed: dict[str, list[int]] = field(default_factory=dict)  # rel -> failing piece indices within the file
    unchecked: int = 0  # pieces with bytes missing from disk
    checked: int = 0
    _leaves: list[bytes | None] = field(default_factory=list)

    def begin(self, item: ReadItem) -> None:
        self._leaves = []

    def update(self, item: ReadItem, offset: int, data: memoryview) -> None:
        if item.is_pad or item.index is None or item.stream_length is None:
            return
        end = min(len(data), item.stream_length - offset)
        for start in range(0, max(end, 0), V2_BLOCK):
            self._leaves.append(hashlib.sha256(data[start : min(start + V2_BLOCK, end)]).digest())

    def end(self, item: ReadItem, size: int) -> None:
        if item.is_pad or item.index is None:
            return
        tf = self.plan.files[item.index]
        if tf.v2_root is None or tf.size == 0:
            return
        blocks = -(-tf.size // V2_BLOCK)
        leaves: list[bytes | None] = list(self._leaves) + [None] * (blocks - len(self._leaves))
        per_piece = self.plan.piece_length // V2_BLOCK
        n_pieces = -(-tf.size // self.plan.piece_length)
        bad: list[int] = []
        if size < tf.size:  # the file is short or missing: its pieces cannot be checked, it is reported as such
            self.unchecked += n_pieces
            self._leaves = []
            return
        if tf.size <= self.plan.piece_length:
            ok = _all_known(leaves) and _merkle_root(leaves, _next_pow2(blocks)) == tf.v2_root
            bad = [] if ok else [0]
        else:
            layer = self.plan.v2_layers.get(tf.v2_root, b"")
            expected = [layer[i * 32 : (i + 1) * 32] for i in range(len(layer) // 32)]
            pad_piece = _merkle_root([], per_piece)
            layer_ok = (
                len(expected) == n_pieces and _merkle_root(expected, _next_pow2(n_pieces), pad_piece) == tf.v2_root
            )
            for p in range(n_pieces):
                chunk = leaves[p * per_piece : (p + 1) * per_piece]
                if not layer_ok or not _all_known(chunk) or _merkle_root(chunk, per_piece) != expected[p]:
                    bad.append(p)
        self.checked += n_pieces
        if bad:
            self.failed[tf.path] = bad
        self._leaves = []

    def finish(self) -> None:
        pass


@dataclass(frozen=True)
class PieceFailure:
    """A file touched by failing pieces: piece ranges (inclusive) and the byte range of the file they cover."""

    path: str
    version: int
    pieces: tuple[tuple[int, int], ...]
    first_byte: int
    last_byte: int

    def describe(self) -> str:
        ranges = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in self.pieces)
        count = sum(b - a + 1 for a, b in self.pieces)
        word, verb = ("piece", "does") if count == 1 else ("pieces", "do")
        return (
            f"{self.path}: v{self.version} {word} {ranges} (bytes {self.first_byte:,}-{self.last_byte:,} of the "
            f"file) {verb} not match the torrent"
        )


def _ranges(indices: list[int]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for i in sorted(set(indices)):
        if out and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return tuple(out)


def v1_failures(plan: TorrentMeta, failed: list[int]) -> list[PieceFailure]:
    """Map failing v1 piece indices onto the files they overlap."""
    out = []
    plen = plan.piece_length
    for f in plan.data_files:
        if f.size == 0:
            continue
        first, last = f.offset // plen, (f.offset + f.size - 1) // plen
        mine = [p for p in failed if first <= p <= last]
        if mine:
            lo = max(min(mine) * plen, f.offset) - f.offset
            hi = min((max(mine) + 1) * plen, f.offset + f.size) - f.offset - 1
            out.append(PieceFailure(f.path, 1, _ranges(mine), lo, hi))
    return out


def v2_failures(plan: TorrentMeta, failed: dict[str, list[int]]) -> list[PieceFailure]:
    out = []
    sizes = {f.path: f.size for f in plan.data_files}
    for rel, pieces in failed.items():
        lo = min(pieces) * plan.piece_length
        hi = min((max(pieces) + 1) * plan.piece_length, sizes[rel]) - 1
        out.append(PieceFailure(rel, 2, _ranges(pieces), lo, hi))
    return out
