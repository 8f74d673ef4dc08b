"""A release's `consolidated.safetensors` (Mixtral 8x22B, and every later Mistral torrent) read as a release
checkpoint: its header strictly and bounded, its tensors as byte ranges of the file, without torch.

The header is at most MAX_HEADER bytes (safetensors' own bound), read once; it must be one JSON object without
duplicate names, each entry exactly {dtype, shape, data_offsets} with a known dtype, at most MAX_DIMS dimensions
and bytes matching its shape; the tensors, in offset order, must tile the data area exactly (the first at 0, each
starting where the previous one ends, the last ending at the end of the file): no overlap (two names for the same
bytes), no gap (bytes no tensor owns), nothing past the end. With an architecture, the tensor count is compared
first and then every key, shape and dtype (`checkpoint.check_tensors`), all before anything is allocated from what
the header declares. A refusal is a MismatchError naming what was expected and what was found.

The records are `checkpoint_index.TensorRecord`s, so convert streams them out of an mmap of the file as it does a
`.pth`'s (`tensor_bytes`, in-kernel copies), and `release_checkpoint` is the one rule for which file a release
folder's weights are in.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from m7b.dtypes import BY_NAME
from m7b.errors import MismatchError, NotFoundError
from m7b.manifests.architecture import Architecture

from .checkpoint import check_tensors
from .checkpoint_index import TensorRecord, index_checkpoint

PTH_CHECKPOINT = "consolidated.00.pth"  # Mistral 7B v0.1, Mixtral 8x7B
SAFETENSORS_CHECKPOINT = "consolidated.safetensors"  # Mixtral 8x22B and later releases
CHECKPOINT_NAMES = (PTH_CHECKPOINT, SAFETENSORS_CHECKPOINT)
MAX_HEADER = 100 << 20  # safetensors' own bound on a header (8x22B's 1,739 tensors: ~200 kB)
MAX_DIMS = 8
MAX_NAME = 1024
# Every element type the safetensors format names, with its size: the ones a torch checkpoint also names (m7b.dtypes)
# and those only safetensors has. Which of them a weight may be is the runtime's and check_tensors' rule, not this
# reader's: here a type only sizes its bytes.
_BY_CODE: dict[str, tuple[str, int]] = {d.safetensors: (d.name, d.itemsize) for d in BY_NAME.values()} | {
    "U16": ("uint16", 2),
    "U32": ("uint32", 4),
    "U64": ("uint64", 8),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
}
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}


def release_checkpoint(folder: Path) -> Path:
    """The checkpoint a release folder ships: `consolidated.00.pth` or `consolidated.safetensors`, exactly one of
    them (NotFoundError naming both when neither is there; MismatchError when both are: which one is the
    release's cannot be told)."""
    found = [Path(folder) / name for name in CHECKPOINT_NAMES if (Path(folder) / name).is_file()]
    if not found:
        raise NotFoundError(
            f"{folder} holds neither {PTH_CHECKPOINT} nor {SAFETENSORS_CHECKPOINT}: a release folder ships one of "
            "them with params.json and tokenizer.model — fetch it first"
        )
    if len(found) > 1:
        raise MismatchError(
            f"{folder} holds both {PTH_CHECKPOINT} and {SAFETENSORS_CHECKPOINT}; a release ships one checkpoint: "
            "remove the one the torrent does not name (or re-fetch the release)"
        )
    return found[0]


def index_release_checkpoint(path: Path, arch: Architecture | None = None) -> dict[str, TensorRecord]:
    """Either format's tensors as byte ranges (a `.pth` through the pickle allowlist, a `.safetensors` through
    `index_safetensors`), each owning exactly its bytes."""
    if Path(path).suffix == ".safetensors":
        return index_safetensors(path, arch)
    return index_checkpoint(path)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


class _Duplicate(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def read_header(path: Path) -> tuple[int, dict[str, Any]]:
    """(header length, the header's JSON object) of a safetensors file, bounded: 8 + at most MAX_HEADER bytes."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"checkpoint {path} not found")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise MismatchError(
                f"{path}: {size} bytes, shorter than a safetensors header's 8-byte length; the file is truncated — "
                "re-download it"
            )
        length = struct.unpack("<Q", head)[0]
        if not 2 <= length <= min(MAX_HEADER, size - 8):
            raise MismatchError(
                f"{path}: its header length is {length:,} bytes, expected 2 to {min(MAX_HEADER, max(size - 8, 0)):,} "
                f"(the file holds {size:,}); it is truncated or not a safetensors file — re-download it"
            )
        raw = fh.read(length)
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except _Duplicate as exc:
        raise MismatchError(
            f"{path}: its header names {exc.key[:80]!r} twice; each tensor is named once — the file was refused"
        ) from None
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise MismatchError(
            f"{path}: its header is not valid JSON ({reason}); expected a safetensors checkpoint — re-download it"
        ) from None
    if not isinstance(doc, dict):
        raise MismatchError(f"{path}: its header is a JSON {type(doc).__name__}, expected an object of tensors")
    return length, doc


def index_safetensors(path: Path, arch: Architecture | None = None) -> dict[str, TensorRecord]:
    """The tensors of a safetensors checkpoint as byte ranges, in the header's order, after every rule of the
    module's docstring; with `arch`, checked against it (count first) before returning."""
    path = Path(path)
    length, doc = read_header(path)
    size = path.stat().st_size
    base = 8 + length
    metadata = doc.pop("__metadata__", None)
    if metadata is not None and (
        not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values())
    ):
        raise MismatchError(f"{path}: its __metadata__ is not a table of strings, as safetensors writes it")
    if arch is not None and len(doc) != arch.tensor_count:
        raise MismatchError(
            f"{path}: the header names {len(doc):,} tensors, params.json implies {arch.tensor_count:,} "
            f"(3 + {arch.tensors_per_layer} per layer): params.json does not describe this checkpoint"
        )
    records = {name: _record(path, name, entry, base) for name, entry in doc.items()}
    _require_tiling(path, records, base, size - base)
    if arch is not None:
        result = check_tensors(records, arch)
        if not result.ok:
            raise MismatchError(f"{path}: " + "; ".join(result.problems()) + " — the file was refused")
    return records


def _record(path: Path, name: str, entry: Any, base: int) -> TensorRecord:
    where = f"{path}: tensor {name[:80]!r}"
    if not name or len(name) > MAX_NAME:
        raise MismatchError(f"{where}: a tensor name is 1 to {MAX_NAME} characters, found {len(name):,}")
    if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
        keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise MismatchError(f"{where}: expected exactly dtype, shape and data_offsets, found {keys}")
    code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(code, str) or code not in _BY_CODE:
        raise MismatchError(
            f"{where}: dtype {str(code)[:20]!r}, expected one of {', '.join(sorted(_BY_CODE))}; the file was refused"
        )
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(type(n) is int and 0 <= n < 1 << 48 for n in shape)
    ):
        raise MismatchError(f"{where}: shape must be at most {MAX_DIMS} sizes below 2**48, found {str(shape)[:80]}")
    if not (
        isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int and 0 <= n < 1 << 62 for n in offsets)
    ):
        raise MismatchError(f"{where}: data_offsets must be [start, end] of the data area, found {str(offsets)[:80]}")
    start, end = offsets
    dtype, itemsize = _BY_CODE[code]
    nbytes = math.prod(shape) * itemsize
    if end - start != nbytes:
        raise MismatchError(
            f"{where}: data_offsets [{start:,}, {end:,}] span {end - start:,} bytes, its {code} shape {shape} "
            f"takes {nbytes:,}; the file was refused"
        )
    stride, step = [], 1
    for n in reversed(shape):
        stride.append(step)
        step *= n
    return TensorRecord(name, dtype, itemsize, tuple(shape), tuple(reversed(stride)), base + start)


def _require_tiling(path: Path, records: Mapping[str, TensorRecord], base: int, data_bytes: int) -> None:
    """The tensors, by offset, cover the data area exactly once: no gap, no overlap, nothing past the end."""
    at = 0
    for r in sorted(records.values(), key=lambda r: (r.offset, r.nbytes)):
        start = r.offset - base
        if start != at and r.nbytes:
            what = "a gap of unowned bytes" if start > at else "overlaps the bytes of another tensor"
            raise MismatchError(
                f"{path}: tensor {r.key[:80]!r} starts at byte {start:,} of the data, the tensors before it end at "
                f"{at:,} ({what}); in a release checkpoint each tensor owns exactly its bytes — the file was refused"
            )
        at = max(at, start + r.nbytes)
    if at != data_bytes:
        what = "past the end of the file: it is truncated" if at > data_bytes else "followed by bytes no tensor owns"
        raise MismatchError(
            f"{path}: the tensors end at byte {at:,} of a {data_bytes:,}-byte data area ({what}) — re-download it"
        )
