"""A streaming safetensors writer: the header is computed from shapes alone, then tensors are written one at a
time (each straight from its mmap'd source) while a second thread hashes the same bytes.

safetensors' own `save_file` needs every tensor of a file at once (for `hf`, every permuted wq/wk) and orders
`__metadata__` keys differently between runs when there is more than one; this writer keeps the caller's
tensor order, sorts metadata keys and so writes byte-identical files for identical input.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import queue
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from io import FileIO
from pathlib import Path

from m7b.dtypes import BY_NAME

# The in-kernel copy `cp` uses (page cache to page cache, no trip through this process); None where the OS lacks it.
_copy_file_range = getattr(os, "copy_file_range", None)
_UNSUPPORTED = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP}
# The hash thread copies each 256 KiB into a buffer that stays in the CPU cache and hashes it there: sha256 over
# the mapped 2.16 GB bench checkpoint took 1.47 s that way, 1.93 s straight from the mapped pages (memory-bound).
HASH_STAGE = 256 << 10


@dataclass(frozen=True)
class FileRange:
    """Where a tensor's bytes already lie, unchanged, in an open file (copied in the kernel instead of written)."""

    fd: int
    offset: int


@dataclass(frozen=True)
class TensorOut:
    """One tensor to write: its name in the file, shape, dtype and how to get its bytes (row-major, any
    buffer) when its turn comes; `source` when those bytes lie unchanged in a file."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    itemsize: int
    produce: Callable[[], memoryview]
    source: FileRange | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.itemsize


def header_bytes(tensors: Iterable[TensorOut], metadata: Mapping[str, str] | None) -> bytes:
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {k: str(metadata[k]) for k in sorted(metadata)}
    offset = 0
    for t in tensors:
        header[t.name] = {
            "dtype": BY_NAME[t.dtype].safetensors,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def write_safetensors(
    path: Path,
    tensors: list[TensorOut],
    metadata: Mapping[str, str] | None = None,
    on_tensor: Callable[[TensorOut, int], None] | None = None,
) -> str:
    """Write `tensors` to `path` in order; return the file's sha256 (hashed in a thread as it is written).

    A tensor with a `source` is copied there by the kernel (`copy_file_range`, as `cp` does) while the hash thread
    reads the same bytes; the others are written from their buffers. `on_tensor(t, offset)` runs once each
    tensor's bytes are in the file, with the file offset of its data (convert reads it back there while the hash
    thread is still busy).
    """
    digest = hashlib.sha256()
    inbox: queue.Queue = queue.Queue(maxsize=2)  # bounds the permuted tensors alive at once
    failure: list[BaseException] = []

    def hash_worker() -> None:
        stage = memoryview(bytearray(HASH_STAGE))
        while (item := inbox.get()) is not None:
            try:
                for start in range(0, item.nbytes, HASH_STAGE):
                    n = min(HASH_STAGE, item.nbytes - start)
                    stage[:n] = item[start : start + n]
                    digest.update(stage[:n])
            except BaseException as exc:  # reported below
                failure.append(exc)

    worker = threading.Thread(target=hash_worker, daemon=True, name="m7b-sha256-out")
    worker.start()
    copying = _copy_file_range is not None
    try:
        with open(path, "wb", buffering=0) as fh:
            head = header_bytes(tensors, metadata)
            inbox.put(memoryview(head))
            _write_all(fh, memoryview(head))
            offset = len(head)
            for t in tensors:
                raw = memoryview(t.produce()).cast("B")
                if raw.nbytes != t.nbytes:
                    raise ValueError(
                        f"{t.name}: produced {raw.nbytes:,} bytes, planned {t.nbytes:,} ({t.shape} {t.dtype})"
                    )
                inbox.put(raw)
                copied = 0
                if copying and t.source is not None:
                    copied, copying = _copy_range(t.source, fh, t.nbytes)
                _write_all(fh, raw[copied:])
                if on_tensor:
                    on_tensor(t, offset)
                offset += t.nbytes
    finally:
        inbox.put(None)
        worker.join()
    if failure:
        raise failure[0]
    return digest.hexdigest()


def _write_all(fh: FileIO, data: memoryview) -> None:
    """An unbuffered write may take less than it is given (Linux: at most ~2 GiB a call): write until all is."""
    done = 0
    while done < data.nbytes:
        done += fh.write(data[done:])


def _copy_range(source: FileRange, fh: FileIO, count: int) -> tuple[int, bool]:
    """Copy `count` bytes from `source` to `fh`'s position in the kernel; (bytes copied, whether to go on copying).
    A file system that cannot (another device, no support) gets the rest written instead; other errors
    (a full disk) are raised."""
    if _copy_file_range is None:  # callers copy only where the OS has it
        return 0, False
    done = 0
    while done < count:
        try:
            n = _copy_file_range(source.fd, fh.fileno(), count - done, source.offset + done)
        except OSError as exc:
            if exc.errno in _UNSUPPORTED:
                return done, False
            raise
        if n == 0:
            raise OSError(errno.EIO, f"the source ended {count - done:,} bytes early; it changed during the copy")
        done += n
    return done, True
