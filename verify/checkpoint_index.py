"""Where each tensor of a `.pth` lies in the file, found without torch: the checkpoint as byte ranges.

After `inspect_checkpoint` has walked `data.pkl` against the allowlist, the pickle is read once more by an unpickler
that resolves only those same globals, and to inert stand-ins: `_rebuild_tensor_v2` records its arguments, storage
classes name a dtype, persistent ids name a `data/<key>` record. Nothing of torch runs and nothing else can be
imported. Each record's data offset comes from its zip local header. Convert streams these byte ranges out of an
mmap of the file (no torch import: ~1 s of a 2 GB convert), and compares its output with them bit for bit.
"""

from __future__ import annotations

import collections
import io
import math
import mmap
import pickle
import struct
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m7b.dtypes import BY_STORAGE
from m7b.errors import MismatchError, UnsafeError

from .checkpoint import ALLOWED_GLOBALS, ZIP_ERRORS, inspect_checkpoint

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., file name length, extra field length


@dataclass(frozen=True)
class TensorRecord:
    """One tensor as bytes of the checkpoint file: element 0 at `offset`, `stride` in elements."""

    key: str
    dtype: str  # torch's name without the prefix: "bfloat16"
    itemsize: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    storage: str = ""  # the zip record (`data/<storage>`) holding the tensor's storage
    storage_offset: int = 0  # in elements
    storage_bytes: int = 0  # the storage's size as the pickle declares it

    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel() * self.itemsize

    @property
    def dense(self) -> bool:
        """The elements fill their bytes exactly once: strides are row-major up to an order of the dimensions (a
        contiguous or transposed tensor), never 0 or with gaps, for every dimension longer than 1."""
        step = 1
        dims = sorted(((st, sz) for sz, st in zip(self.shape, self.stride, strict=True) if sz != 1))
        for stride, size in dims:
            if stride != step:
                return False
            step *= size
        return True

    @property
    def contiguous(self) -> bool:
        expected, step = [], 1
        for s in reversed(self.shape):
            expected.append(step)
            step *= s
        return all(
            size == 1 or st == want for size, st, want in zip(self.shape, self.stride, reversed(expected), strict=True)
        )


@dataclass(frozen=True)
class _Storage:
    dtype: str
    itemsize: int
    key: str
    numel: int


@dataclass(frozen=True)
class _Rebuilt:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(
    storage: _Storage, storage_offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_: Any
) -> _Rebuilt:
    if (
        not isinstance(storage, _Storage)
        or not _ints(size)
        or not _ints(stride)
        or len(size) != len(stride)
        or not isinstance(storage_offset, int)
        or storage_offset < 0
    ):
        raise MismatchError("a tensor of the pickle has a malformed storage, offset, size or stride")
    return _Rebuilt(storage, storage_offset, tuple(size), tuple(stride))


def _ints(values: object) -> bool:
    return isinstance(values, tuple) and all(isinstance(v, int) and v >= 0 for v in values)


class _StorageClass:
    def __init__(self, name: str) -> None:
        self.name = name


class _IndexUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if full not in ALLOWED_GLOBALS:  # inspect_checkpoint refused these already; never trust one check alone
            raise UnsafeError(f"the pickle imports {full}; refused")
        if full == "torch._utils._rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if full == "collections.OrderedDict":
            return collections.OrderedDict
        return _StorageClass(name)

    def persistent_load(self, pid: Any) -> _Storage:
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageClass)
            and isinstance(pid[2], str)
            and isinstance(pid[4], int)
        ):
            raise MismatchError(f"unexpected persistent id {pid!r}; expected ('storage', class, key, location, n)")
        dtype = BY_STORAGE[pid[1].name]
        return _Storage(dtype.name, dtype.itemsize, pid[2], pid[4])


def index_checkpoint(path: Path, *, owned: bool = True) -> dict[str, TensorRecord]:
    """{key: TensorRecord} in the pickle's order; UnsafeError / MismatchError as `inspect_checkpoint`, and
    MismatchError when a tensor reaches past its record.

    `owned` (the default, and what every release checkpoint must pass): each tensor owns exactly its bytes — see
    `require_owned`. `owned=False` indexes any layout torch.save writes (views sharing a storage, offsets)."""
    path = Path(path)
    inspection = inspect_checkpoint(path)
    file_size = path.stat().st_size
    archive = inspection.archive
    try:
        zf = zipfile.ZipFile(path)
        pkl = zf.read(f"{archive}/data.pkl")
    except ZIP_ERRORS as exc:
        raise MismatchError(
            f"{path}: could not read {archive}/data.pkl ({exc}); the file is damaged — re-download it"
        ) from exc
    with zf, open(path, "rb") as raw:
        try:
            state = _IndexUnpickler(io.BytesIO(pkl)).load()
        except (UnsafeError, MismatchError) as exc:
            raise type(exc)(f"{path}: {exc}; the file was refused") from exc
        except Exception as exc:
            raise MismatchError(
                f"{path}: data.pkl does not describe a state dict ({type(exc).__name__}: {exc}); re-download the file"
            ) from exc
        if not isinstance(state, dict):
            raise MismatchError(f"{path}: expected a dict of tensors, found {type(state).__name__}")
        starts: dict[str, tuple[int, int]] = {}
        records: dict[str, TensorRecord] = {}
        for key, value in state.items():
            if not isinstance(key, str) or not isinstance(value, _Rebuilt):
                raise MismatchError(f"{path}: entry {key!r} is not a tensor; expected a flat dict of named tensors")
            storage = value.storage
            if storage.key not in starts:
                starts[storage.key] = _record_start(zf, raw, f"{archive}/data/{storage.key}", path)
            start, size = starts[storage.key]
            if start + size > file_size:
                raise MismatchError(
                    f"{path}: the record of tensor {key} ends at byte {start + size:,}, past the end of the "
                    f"file ({file_size:,} bytes); the file is truncated — re-download it"
                )
            record = TensorRecord(
                key,
                storage.dtype,
                storage.itemsize,
                value.shape,
                value.stride,
                start + value.offset * storage.itemsize,
                storage.key,
                value.offset,
                storage.numel * storage.itemsize,
            )
            last = (
                value.offset + sum((s - 1) * st for s, st in zip(value.shape, value.stride, strict=True))
                if record.numel()
                else value.offset - 1
            )
            if (last + 1) * storage.itemsize > min(size, storage.numel * storage.itemsize):
                raise MismatchError(
                    f"{path}: tensor {key} reaches past its data record ({size:,} bytes); the file "
                    "is damaged — re-download it"
                )
            records[key] = record
    if owned:
        require_owned(records, {k: size for k, (_, size) in starts.items()}, path)
    return records


def require_owned(records: dict[str, TensorRecord], record_bytes: dict[str, int], path: Path) -> None:
    """MismatchError naming the first tensor that does not own exactly its bytes: its storage must start at the
    tensor (offset 0), be exactly the tensor's size, be held by its zip record byte for byte and by no other tensor,
    and the strides must be dense (no element read twice: stride 0; none skipped: gaps).

    A few KB of pickle can otherwise describe 7 billion parameters as views of one 2-byte record: every later step
    (shape checks, convert, the runtime) would take it at its word and allocate or write the declared size."""
    owner: dict[str, str] = {}
    for key, r in records.items():
        problem = None
        if r.storage in owner:
            problem = f"shares its storage (record data/{r.storage}) with tensor {owner[r.storage]}"
        elif r.storage_offset:
            problem = f"starts at element {r.storage_offset:,} of its storage, not at its start (storage offset 0)"
        elif not r.dense:
            problem = f"has strides {r.stride} for shape {r.shape}: elements overlap or leave gaps"
        elif r.storage_bytes != r.nbytes:
            problem = f"is {r.nbytes:,} bytes but its storage is {r.storage_bytes:,}"
        elif record_bytes[r.storage] != r.storage_bytes:
            problem = f"has a storage of {r.storage_bytes:,} bytes in a record of {record_bytes[r.storage]:,}"
        if problem:
            raise MismatchError(
                f"{path}: tensor {key} {problem}; in a release checkpoint each tensor owns exactly its own bytes. "
                "The file was refused before anything its tensors declare was allocated or written"
            )
        owner[r.storage] = key


def _record_start(zf: zipfile.ZipFile, raw: Any, member: str, path: Path) -> tuple[int, int]:
    """(file offset of the member's data, its size): the local header's own name and extra lengths count."""
    try:
        info = zf.getinfo(member)
    except KeyError:
        raise MismatchError(
            f"{path}: the pickle names record {member}, which the zip does not hold; the file is "
            "damaged — re-download it"
        ) from None
    raw.seek(info.header_offset)
    header = raw.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size or _LOCAL_HEADER.unpack(header)[0] != b"PK\x03\x04":
        raise MismatchError(f"{path}: no zip local header for {member} at byte {info.header_offset:,}")
    _, name_len, extra_len = _LOCAL_HEADER.unpack(header)
    return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len, info.file_size


@dataclass(frozen=True)
class MappedFile:
    view: memoryview  # the whole file, read-only
    fd: int  # open for reading while mapped (for in-kernel copies of its ranges)


@contextmanager
def mapped(path: Path) -> Iterator[MappedFile]:
    """The whole file memory-mapped (pages come from the page cache, never private memory), and its descriptor.

    Unmapped on exit unless a slice is still referenced (a traceback can hold one): then when the last goes."""
    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        view = memoryview(mm)
        try:
            yield MappedFile(view, fh.fileno())
        finally:
            try:
                view.release()
                mm.close()
            except BufferError:
                pass


def tensor_bytes(view: memoryview, record: TensorRecord) -> memoryview:
    """The tensor's bytes in row-major order: a slice of the map when contiguous, else a gathered copy."""
    if record.contiguous:
        return view[record.offset : record.offset + record.nbytes]
    import numpy as np

    elements = np.frombuffer(
        view,
        dtype=np.dtype(f"V{record.itemsize}"),
        offset=record.offset,
        count=(len(view) - record.offset) // record.itemsize,
    )
    strided = np.lib.stride_tricks.as_strided(
        elements, record.shape, tuple(s * record.itemsize for s in record.stride), writeable=False
    )
    return np.ascontiguousarray(strided).data.cast("B")  # .data: the array's buffer, as memoryview
