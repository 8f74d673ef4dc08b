"""A streaming safetensors writer: the header is computed from shapes alone, then tensors are written one at a
time (each straight from its mmap'd source) while a second thread hashes the same bytes.

safetensors' own `save_file` needs every tensor of a file at once (for `hf`, every permuted wq/wk) and orders
`__metadata__` keys differently between runs when there is more than one; this writer keeps the caller's
tensor order, sorts metadata keys and so writes byte-identical files for identical input.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

# torch's dtype name (without "torch.") -> safetensors' dtype code
DTYPES: dict[str, str] = {
    "bfloat16": "BF16", "float16": "F16", "float32": "F32", "float64": "F64", "int64": "I64", "int32": "I32",
    "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
}


@dataclass(frozen=True)
class TensorOut:
    """One tensor to write: its name in the file, shape, dtype and how to get its bytes (row-major, any
    buffer) when its turn comes."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    itemsize: int
    produce: Callable[[], memoryview]

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * self.itemsize


def header_bytes(tensors: Iterable[TensorOut], metadata: Mapping[str, str] | None) -> bytes:
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {k: str(metadata[k]) for k in sorted(metadata)}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def write_safetensors(path: Path, tensors: list[TensorOut], metadata: Mapping[str, str] | None = None,
                      on_tensor: Callable[[TensorOut, int], None] | None = None) -> str:
    """Write `tensors` to `path` in order; return the file's sha256 (hashed in a thread as it is written).

    `on_tensor(t, offset)` runs once each tensor's bytes are handed to the OS, with the file offset of its data
    (convert reads it back there while the hash thread is still busy).
    """
    digest = hashlib.sha256()
    inbox: queue.Queue = queue.Queue(maxsize=2)  # bounds the permuted tensors alive at once
    failure: list[BaseException] = []

    def hash_worker() -> None:
        while (item := inbox.get()) is not None:
            try:
                digest.update(item)
            except BaseException as exc:  # reported below
                failure.append(exc)

    worker = threading.Thread(target=hash_worker, daemon=True, name="m7b-sha256-out")
    worker.start()
    try:
        with open(path, "wb") as fh:
            head = header_bytes(tensors, metadata)
            inbox.put(head)
            fh.write(head)
            offset = len(head)
            for t in tensors:
                raw = memoryview(t.produce()).cast("B")
                if raw.nbytes != t.nbytes:
                    raise ValueError(f"{t.name}: produced {raw.nbytes:,} bytes, planned {t.nbytes:,} ({t.shape} "
                                     f"{t.dtype})")
                inbox.put(raw)
                fh.write(raw)
                if on_tensor:
                    fh.flush()
                    on_tensor(t, offset)
                offset += t.nbytes
    finally:
        inbox.put(None)
        worker.join()
    if failure:
        raise failure[0]
    return digest.hexdigest()
