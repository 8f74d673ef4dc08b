"""Write a PyTorch zip checkpoint one tensor at a time.

`torch.save` needs the whole state dict in memory and writes a random serialization id; this writer
streams tensors from a producer, keeps one in memory at a time, and is deterministic. The layout is
torch's own: `<archive>/data.pkl` (a protocol-2 pickle of a dict of `_rebuild_tensor_v2` calls with
persistent storage ids), `.format_version`, `.storage_alignment`, `byteorder`, `data/<n>` records stored
uncompressed and 64-byte aligned, `version`, `.data/serialization_id`.
"""

from __future__ import annotations

import collections
import hashlib
import io
import math
import pickle
import struct
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from m7b.atomic import atomic_file
from m7b.dtypes import BY_NAME, dtype_name
from m7b.progress import ProgressCallback, ProgressEvent, ignore_progress

ALIGNMENT = 64
_EPOCH = (1980, 1, 1, 0, 0, 0)
_PAD_HEADER_ID = 0x4246  # "FB", the id torch's writer uses for its alignment padding


@dataclass(frozen=True)
class TensorSpec:
    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.bfloat16

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


class _StorageRef:
    def __init__(self, index: int, spec: TensorSpec) -> None:
        self.index = index
        self.spec = spec


class _TensorRef:
    """Pickles exactly like a contiguous CPU tensor does under torch.save."""

    def __init__(self, storage: _StorageRef) -> None:
        self.storage = storage

    def __reduce__(self) -> tuple:
        shape = self.storage.spec.shape
        stride = tuple(int(torch.Size(shape[i + 1 :]).numel()) for i in range(len(shape)))
        return (
            torch._utils._rebuild_tensor_v2,
            (self.storage, 0, tuple(shape), stride, False, collections.OrderedDict()),
        )


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: object) -> tuple | None:
        if isinstance(obj, _StorageRef):
            storage_class = getattr(torch, BY_NAME[dtype_name(obj.spec.dtype)].storage)
            return ("storage", storage_class, str(obj.index), "cpu", obj.spec.numel)
        return None


def state_dict_pickle(specs: Sequence[TensorSpec]) -> bytes:
    """The data.pkl torch.save writes for a dict of contiguous CPU tensors with these specs."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump({s.key: _TensorRef(_StorageRef(i, s)) for i, s in enumerate(specs)})
    return buf.getvalue()


def _aligned_info(zf: zipfile.ZipFile, name: str) -> zipfile.ZipInfo:
    """A ZipInfo whose data will start on an ALIGNMENT boundary, with a fixed timestamp."""
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.compress_type = zipfile.ZIP_STORED
    assert zf.fp is not None  # an open ZipFile, being written
    offset = zf.fp.tell() + 30 + len(name.encode("ascii"))
    pad = (-(offset + 4)) % ALIGNMENT
    info.extra = struct.pack("<HH", _PAD_HEADER_ID, pad) + b"Z" * pad
    return info


def write_checkpoint(
    path: Path,
    specs: Sequence[TensorSpec],
    produce: Callable[[TensorSpec], torch.Tensor],
    *,
    archive: str | None = None,
    progress: ProgressCallback = ignore_progress,
) -> None:
    """Write `specs` to a torch zip checkpoint at `path`, asking `produce` for one tensor at a time.

    The file appears under `path` only once complete (temporary name, fsync, rename).
    """
    path = Path(path)
    archive = archive or path.name.rsplit(".", 1)[0]
    pkl = state_dict_pickle(specs)
    total = sum(s.nbytes for s in specs)
    done = 0
    digest = hashlib.sha1(pkl)
    with atomic_file(path) as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:

        def record(name: str, data: bytes | memoryview) -> None:
            zf.writestr(_aligned_info(zf, f"{archive}/{name}"), data)

        record("data.pkl", pkl)
        record(".format_version", b"1")
        record(".storage_alignment", str(ALIGNMENT).encode())
        record("byteorder", b"little")
        for index, spec in enumerate(specs):
            tensor = produce(spec)
            if tuple(tensor.shape) != spec.shape or tensor.dtype != spec.dtype:
                raise ValueError(f"producer gave {tuple(tensor.shape)} {tensor.dtype} for {spec}")
            raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data  # the array's buffer, as memoryview
            record(f"data/{index}", raw)
            digest.update(raw)
            done += spec.nbytes
            progress(ProgressEvent("writing", done, total, item=spec.key))
        record("version", b"3\n")
        # torch writes a random id here; ours is derived from the content, so the file is reproducible.
        record(".data/serialization_id", digest.hexdigest().encode())
