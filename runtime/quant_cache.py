"""The quantized weights of a release, made once and kept in the store (`M7B_HOME/cache/quantized/<key>/`).

The key is the release's name, the scheme, the format and the sha256 of the weights file they come from (the
verified checkpoint's, from the verify report while the file is unchanged since; else hashed once and recorded by
the file's path, size and mtime). The folder holds `weights.safetensors` (per linear: `<name>.q`, `<name>.scales`)
and `READY.json`, written after the file: the key's parts, the file's size, mtime and sha256 (computed while it was
written). A run maps the file (no private copy). A file whose size differs from the record, whose header does not
hold every tensor at its shape, or whose mtime changed and whose sha256 no longer matches, is damaged: it is
rebuilt. A store the disk refuses (read-only, a file in the way) means the weights are quantized in memory for this
run (the note says so: paid again next run); a symlink in the way is refused (exit 6), never followed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from m7b import __version__
from m7b.atomic import atomic_file, write_text
from m7b.errors import StorageError
from m7b.owned import own_dir, refuse_link
from m7b.store import Store, unchanged_since
from m7b.verify.convert import file_sha256

from .quantize import QuantizedWeight, quantize, quantized_shapes
from .quantized_linear import kept_linears, linear_names

FORMAT = 2  # the layout of weights.safetensors and the schemes' arithmetic: a change makes a new key
ALIGN = 64  # every tensor starts at a multiple of 64 bytes in the file (torch's int8 matmul loads aligned vectors)
FILE_NAME = "weights.safetensors"
READY_NAME = "READY.json"
SOURCES_DIR = "sources"  # sha256 records of weights files no verify report covers, by resolved path
_DTYPES = {torch.int8: "I8", torch.uint8: "U8", torch.float32: "F32", torch.float16: "F16"}


@dataclass(frozen=True)
class QuantizedSet:
    """A model's quantized linears and where they came from."""

    scheme: str
    weights: dict[str, QuantizedWeight]  # by linear module name
    kept: tuple[str, ...]  # linears left in the release's precision
    source_sha256: str
    source_digest_from: str  # "verify report", "recorded" or "hashed now"
    cache: str  # "hit", "built" (now), "rebuilt" (a damaged file replaced) or "memory" (the store refused)
    path: Path | None  # the cache file (None: made in memory)
    seconds: float  # finding or making them
    note: str = ""

    def record(self) -> dict[str, object]:
        return {
            "weights": self.scheme,
            "quantized_linears": len(self.weights),
            "kept_linears": list(self.kept),
            "quantized_bytes": sum(w.nbytes for w in self.weights.values()),
            "quant_cache": self.cache,
            "quant_cache_path": str(self.path) if self.path else None,
            "quant_s": round(self.seconds, 3),
            "source_sha256": self.source_sha256,
        }


def source_sha256(store: Store, release_name: str | None, weights: Path, root: Path | None) -> tuple[str, str]:
    """The sha256 of the weights file and where it came from: the release's verify report (the file unchanged
    since), a record this cache kept of it (unchanged since), or hashed now (and recorded when `root` takes it)."""
    from m7b.verify.convert import known_sha256

    known = known_sha256(store, release_name, weights)
    if known:
        return known, "verify report"
    resolved = weights.resolve()
    key = hashlib.sha256(str(resolved).encode("utf-8", "surrogateescape")).hexdigest()[:40]
    record_path = root / SOURCES_DIR / f"{key}.json" if root is not None else None
    if record_path is not None:
        doc = _read_json(record_path)
        if doc and doc.get("path") == str(resolved) and unchanged_since(resolved.parent, _state(doc, resolved.name)):
            return str(doc["sha256"]), "recorded"
    stat = resolved.stat()
    digest = file_sha256(resolved)
    if record_path is not None and root is not None and _writable(record_path.parent, root):
        doc = {"path": str(resolved), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        with contextlib.suppress(StorageError):  # recorded next time
            write_text(record_path, json.dumps(doc, indent=1) + "\n")
    return digest, "hashed now"


def cache_key(release_name: str, scheme: str, sha256: str) -> dict[str, object]:
    return {"release": release_name, "scheme": scheme, "source_sha256": sha256, "format": FORMAT}


def cache_folder(root: Path, key: dict[str, object]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return root / f"{key['scheme']}-{digest}"


def quantized_weights(
    model: nn.Module,
    scheme: str,
    weights_path: Path,
    release_name: str,
    store: Store,
    root: Path | None,
) -> QuantizedSet:
    """The quantized linears of `model` (its weights as loaded from `weights_path`) in `scheme`, from the cache
    under `root` (None, or a folder the disk refuses: made in memory)."""
    start = time.perf_counter()
    names = linear_names(model)
    kept = tuple(kept_linears(model))
    shapes = {n: tuple(model.get_parameter(f"{n}.weight").shape) for n in names}
    usable = root is not None and _writable(root, store.home)
    sha256, digest_from = source_sha256(store, release_name, weights_path, root if usable else None)

    def made(weights: dict[str, QuantizedWeight], cache: str, path: Path | None, note: str = "") -> QuantizedSet:
        return QuantizedSet(scheme, weights, kept, sha256, digest_from, cache, path, time.perf_counter() - start, note)

    if not usable or root is None:
        why = "no cache folder was given" if root is None else f"the store refused the cache folder {root}"
        weights = {n: quantize(scheme, model.get_parameter(f"{n}.weight")) for n in names}
        return made(weights, "memory", None, f"{scheme} weights quantized in memory ({why}): paid again next run")
    key = cache_key(release_name, scheme, sha256)
    folder = cache_folder(root, key)
    own_dir(folder, store.home)  # a symlink there: LinkInTheWayError, exit 6
    path = folder / FILE_NAME
    found, problem = _load(folder, key, scheme, shapes)
    if found is not None:
        return made(found, "hit", path)
    _build(model, scheme, names, folder, key)
    loaded, again = _load(folder, key, scheme, shapes)
    if loaded is None:
        raise StorageError(f"the quantized weights just written to {path} do not read back ({again}): check the disk")
    if problem == "absent":
        return made(loaded, "built", path)
    return made(loaded, "rebuilt", path, f"the cached {scheme} weights were damaged ({problem}) and were rebuilt")


def _writable(folder: Path, home: Path) -> bool:
    try:
        own_dir(folder, home)  # a symlink there: LinkInTheWayError, exit 6
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(refuse_link(path, "read").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _state(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return {"path": name, "size": doc.get("size"), "mtime_ns": doc.get("mtime_ns")}


def _header(scheme: str, names: list[str], shapes: dict[str, tuple[int, ...]]) -> tuple[bytes, list[tuple[str, int]]]:
    """The safetensors header for the quantized tensors (each at a multiple of ALIGN bytes from the file's start),
    and (tensor name, padding bytes before it) in file order."""
    metadata = {"format": "m7b-quantized", "scheme": scheme, "m7b": __version__}
    order: list[tuple[str, int]] = []
    placed: list[tuple[str, list[int], torch.dtype, int]] = []
    for name in names:
        q_shape, s_shape = quantized_shapes(scheme, (shapes[name][0], shapes[name][1]))
        q_dtype = torch.int8 if scheme == "int8" else torch.uint8
        s_dtype = torch.float32 if scheme == "int8" else torch.float16
        for suffix, shape, dtype in (("q", q_shape, q_dtype), ("scales", s_shape, s_dtype)):
            n = dtype.itemsize
            for dim in shape:
                n *= dim
            placed.append((f"{name}.{suffix}", list(shape), dtype, n))
    # the header's length depends on the offsets and the offsets on it: place, and grow the room until it fits
    room = 256 + 128 * len(placed)
    while True:
        base = 8 + room + (-(8 + room) % ALIGN)
        entries: dict[str, object] = {"__metadata__": metadata}
        order.clear()
        offset = 0
        for i, (key, dims, dtype, n) in enumerate(placed):
            pad = -(base + offset) % ALIGN
            if pad:  # a filler tensor: safetensors indexes every byte of its buffer, no holes
                entries[f"__pad.{i}"] = {"dtype": "U8", "shape": [pad], "data_offsets": [offset, offset + pad]}
            offset += pad
            entries[key] = {"dtype": _DTYPES[dtype], "shape": dims, "data_offsets": [offset, offset + n]}
            order.append((key, pad))
            offset += n
        raw = json.dumps(entries, separators=(",", ":")).encode()
        if len(raw) <= base - 8:
            break
        room = len(raw) + 1024
    raw += b" " * (base - 8 - len(raw))
    return struct.pack("<Q", len(raw)) + raw, order


def _build(model: nn.Module, scheme: str, names: list[str], folder: Path, key: dict[str, object]) -> None:
    """Quantize each linear in turn and stream it into the file (one matrix in memory at a time), hashing as it
    is written; READY.json last."""
    shapes = {n: tuple(model.get_parameter(f"{n}.weight").shape) for n in names}
    header, order = _header(scheme, names, shapes)
    pads = iter(pad for _, pad in order)
    digest = hashlib.sha256(header)
    path = folder / FILE_NAME
    (folder / READY_NAME).unlink(missing_ok=True)  # the old record goes first: a half-replaced pair is never READY
    with atomic_file(path) as fh:
        fh.write(header)
        for name in names:
            weight = quantize(scheme, model.get_parameter(f"{name}.weight"))
            for tensor in (weight.q, weight.scales):
                data = bytes(next(pads)) + tensor.contiguous().view(torch.uint8).numpy().tobytes()
                digest.update(data)
                fh.write(data)
    stat = path.stat()
    ready = {**key, "file": FILE_NAME, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest.hexdigest()}
    ready["tensors"] = len(names)
    write_text(folder / READY_NAME, json.dumps(ready, indent=1) + "\n")


def _load(
    folder: Path, key: dict[str, object], scheme: str, shapes: dict[str, tuple[int, ...]]
) -> tuple[dict[str, QuantizedWeight] | None, str]:
    """The cached weights, memory-mapped, or None and why not ("absent", or what is damaged)."""
    path = folder / FILE_NAME
    ready = _read_json(folder / READY_NAME)
    if ready is None or not path.is_file():
        return None, "absent"
    if any(ready.get(k) != v for k, v in key.items()):
        return None, f"{READY_NAME} names another release, scheme or source"
    refuse_link(path, "read")
    size = path.stat().st_size
    if size != ready.get("size"):
        return None, f"{FILE_NAME} is {size:,} bytes, {READY_NAME} recorded {ready.get('size')}"
    if not unchanged_since(folder, _state(ready, FILE_NAME)):
        if file_sha256(path) != ready.get("sha256"):
            return None, f"{FILE_NAME} changed since it was written: its sha256 differs from {READY_NAME}'s"
        touched = {**ready, "mtime_ns": path.stat().st_mtime_ns}
        with contextlib.suppress(StorageError):  # the same bytes, touched: the next run need not hash again
            write_text(folder / READY_NAME, json.dumps(touched, indent=1) + "\n")
    return _open(path, scheme, shapes)


def _open(path: Path, scheme: str, shapes: dict[str, tuple[int, ...]]) -> tuple[dict[str, QuantizedWeight] | None, str]:
    from safetensors import SafetensorError, safe_open

    out: dict[str, QuantizedWeight] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name, shape in shapes.items():
                q_shape, s_shape = quantized_shapes(scheme, (shape[0], shape[1]))
                q, scales = f.get_tensor(f"{name}.q"), f.get_tensor(f"{name}.scales")
                want_q = torch.int8 if scheme == "int8" else torch.uint8
                want_s = torch.float32 if scheme == "int8" else torch.float16
                shapes_ok = tuple(q.shape) == q_shape and tuple(scales.shape) == s_shape
                if not (shapes_ok and q.dtype == want_q and scales.dtype == want_s):
                    return None, f"{name} is stored at another shape or type than the model's"
                out[name] = QuantizedWeight(scheme, q, scales)
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        return None, f"{FILE_NAME} does not read as the expected tensors ({exc})"
    return out, ""
