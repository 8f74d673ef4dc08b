"""Safe checkpoint reading: inspect the zip and walk its pickle against an allowlist before anything unpickles.

A `.pth` is a zip holding `<archive>/data.pkl` (a pickle that rebuilds tensors from `data/<key>` records),
`byteorder`, `version`, .... `torch.load(weights_only=True)` has had bypasses (CVE-2025-32434) and memory
corruption (CVE-2026-24747), and scanners that look for bad globals have been bypassed; an allowlist has not.
So every GLOBAL the pickle would import is read with `pickletools.genops` (nothing executes) and anything outside
the few a plain tensor state dict needs refuses the file, naming the global and its byte offset in data.pkl.
Only then `torch.load(weights_only=True, mmap=True)`: tensors stay in the page cache, not in private memory.
"""

from __future__ import annotations

import pickletools
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m7b.dtypes import BY_STORAGE, dtype_name
from m7b.errors import MismatchError, NotFoundError, UnsafeError
from m7b.manifests.architecture import Architecture
from m7b.manifests.schema import CheckpointFacts
from m7b.paths import path_problem

if TYPE_CHECKING:
    pass

ALLOWED_GLOBALS: frozenset[str] = frozenset(
    {"torch._utils._rebuild_tensor_v2", "collections.OrderedDict"} | {f"torch.{s}" for s in BY_STORAGE}
)
MAX_PICKLE_BYTES = 64 << 20  # a 7B state dict's data.pkl is ~30 KB
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_REFUSED_OPS = {"INST", "OBJ", "EXT1", "EXT2", "EXT4"}
# What zipfile raises for a damaged or unusual archive (NotImplementedError: an unknown compression method or
# encryption; EOFError, zlib.error via ValueError/OSError subclasses: cut data).
ZIP_ERRORS = (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError, RuntimeError)


@dataclass(frozen=True)
class PickleGlobal:
    name: str  # "module.qualname"
    offset: int  # byte offset of the opcode in data.pkl


@dataclass(frozen=True)
class Inspection:
    """What the zip and its pickle hold, read without unpickling."""

    path: Path
    archive: str
    pickle_bytes: int
    globals: tuple[PickleGlobal, ...]
    records: int
    byteorder: str | None


def scan_pickle(data: bytes, where: str) -> list[PickleGlobal]:
    """Every global the pickle would import; raise UnsafeError at the first one not allowed."""
    found: list[PickleGlobal] = []
    memo: dict[object, Any] = {}  # keyed by the memo ops' int arguments
    recent: list[Any] = []  # values of the last pushes, as far as they are strings; None when unknown
    try:
        for opcode, arg, pos in pickletools.genops(data):
            assert pos is not None  # genops reads bytes through a BytesIO, which tells every opcode's offset
            name = opcode.name
            if name in _REFUSED_OPS:
                raise UnsafeError(
                    f"{where}: pickle opcode {name} at byte {pos} (argument {arg!r}) can run code and "
                    "is never used by a tensor state dict; the file was refused and nothing was loaded"
                )
            if name == "GLOBAL":
                module, _, qual = str(arg).partition(" ")
                found.append(_check_global(f"{module}.{qual}", pos, where))
                recent.append(None)
            elif name == "STACK_GLOBAL":
                if len(recent) < 2 or not isinstance(recent[-2], str) or not isinstance(recent[-1], str):
                    raise UnsafeError(
                        f"{where}: pickle imports a global at byte {pos} whose name is computed, "
                        "which a tensor state dict never does; the file was refused, nothing was loaded"
                    )
                found.append(_check_global(f"{recent[-2]}.{recent[-1]}", pos, where))
                recent[-2:] = [None]
            elif name in _STRING_OPS:
                recent.append(arg)
            elif name == "MEMOIZE":
                memo[len(memo)] = recent[-1] if recent else None
            elif name in _PUT_OPS:
                memo[arg] = recent[-1] if recent else None
            elif name in _GET_OPS:
                recent.append(memo.get(arg))
            else:
                recent.append(None)
            del recent[:-4]
    except UnsafeError:
        raise
    except Exception as exc:  # genops raises ValueError and friends on malformed input
        raise MismatchError(
            f"{where}: the pickle is malformed ({exc}); expected a torch state dict — re-download the file"
        ) from exc
    return found


def _check_global(name: str, pos: int, where: str) -> PickleGlobal:
    if name not in ALLOWED_GLOBALS:
        raise UnsafeError(
            f"{where}: the pickle imports {name} at byte {pos} of data.pkl; a tensor checkpoint only needs "
            f"{', '.join(sorted(g for g in ALLOWED_GLOBALS if 'Storage' not in g))} and torch storage classes. "
            "The file was refused and nothing was unpickled: do not load it with torch.load or pickle"
        )
    return PickleGlobal(name, pos)


def inspect_checkpoint(path: Path) -> Inspection:
    """Check the zip layout and the pickle's globals; raise NotFound/Mismatch/UnsafeError, never unpickle."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"checkpoint {path} not found")
    size = path.stat().st_size
    try:
        zf = zipfile.ZipFile(path)
    except ZIP_ERRORS as exc:
        raise MismatchError(
            f"{path} is not a complete torch zip checkpoint ({exc}); it may be truncated — "
            "re-download it or check it against the torrent"
        ) from exc
    with zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        for n in names:
            if path_problem(n) is not None:
                raise UnsafeError(f"{path}: zip member {n!r} points outside the archive; the file was refused")
        if len(set(names)) != len(names):
            raise UnsafeError(f"{path}: the zip holds duplicate member names; the file was refused")
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            pkls = ", ".join(n for n in names if n.endswith(".pkl")) or "no .pkl member"
            raise MismatchError(
                f"{path}: expected exactly one <archive>/data.pkl, found {pkls}; "
                "this is not a torch checkpoint as torch.save writes it"
            )
        archive = pickles[0].split("/")[0]
        outside = [n for n in names if not n.startswith(archive + "/")]
        if outside:
            raise MismatchError(f"{path}: member {outside[0]!r} lies outside the archive folder {archive!r}")
        for info in infos:
            end = info.header_offset + 30 + len(info.filename.encode()) + info.compress_size
            if end > size:
                raise MismatchError(
                    f"{path}: member {info.filename} ends past the end of the file "
                    f"({end:,} > {size:,} bytes); the file is truncated — re-download it"
                )
            if info.filename.startswith(f"{archive}/data/") and info.compress_type != zipfile.ZIP_STORED:
                raise MismatchError(
                    f"{path}: tensor record {info.filename} is compressed; torch writes them "
                    "stored (and mmap needs that)"
                )
        pkl_info = zf.getinfo(pickles[0])
        if pkl_info.file_size > MAX_PICKLE_BYTES:
            raise MismatchError(
                f"{path}: data.pkl is {pkl_info.file_size:,} bytes; a state dict's is far smaller "
                f"(limit {MAX_PICKLE_BYTES:,})"
            )
        try:
            data = zf.read(pickles[0])
            byteorder = zf.read(f"{archive}/byteorder").decode().strip() if f"{archive}/byteorder" in names else None
        except ZIP_ERRORS as exc:
            raise MismatchError(
                f"{path}: could not read {pickles[0]} ({exc}); the file is damaged — re-download it"
            ) from exc
        if byteorder not in (None, "little"):
            raise MismatchError(f"{path}: byteorder is {byteorder!r}, expected 'little'")
        records = sum(1 for n in names if n.startswith(f"{archive}/data/"))
    found = scan_pickle(data, f"{path}")
    return Inspection(path, archive, len(data), tuple(found), records, byteorder)


@dataclass
class TensorCheck:
    """Keys, shapes and dtypes of a state dict against params.json (and the manifest's checkpoint facts)."""

    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    wrong_shape: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    wrong_dtype: list[tuple[str, str, str]] = field(default_factory=list)
    tensors: int = 0
    parameters: int = 0
    dtype: str | None = None
    facts: list[str] = field(default_factory=list)  # disagreements with the manifest's checkpoint facts
    expected_tensors: int | None = None  # set when the count alone disagrees (nothing per-key was compared)
    per_layer: int = 9  # the tensors params.json implies per layer (9 dense; 7 + 3 per expert)

    @property
    def ok(self) -> bool:
        return not (
            self.missing or self.extra or self.wrong_shape or self.wrong_dtype or self.facts or self.expected_tensors
        )

    def problems(self) -> list[str]:
        out = []
        if self.expected_tensors is not None:
            out.append(
                f"the checkpoint holds {self.tensors} tensors, params.json implies {self.expected_tensors:,} "
                f"(3 + {self.per_layer} per layer): params.json does not describe this checkpoint"
            )
        if self.missing:
            out.append(f"missing key(s) {_few(self.missing)}")
        if self.extra:
            out.append(f"unexpected key(s) {_few(self.extra)}")
        out += [
            f"{k} has shape {tuple(found)}, params.json implies {tuple(exp)}" for k, found, exp in self.wrong_shape[:5]
        ]
        out += [f"{k} is {found}, expected {exp}" for k, found, exp in self.wrong_dtype[:5]]
        return out + self.facts


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def check_tensors(state: Mapping[str, Any], arch: Architecture, facts: CheckpointFacts | None = None) -> TensorCheck:
    """Compare keys, shapes and dtypes with what params.json implies; `state` holds torch tensors or
    `checkpoint_index.TensorRecord`s (anything with `shape`, `dtype` and `numel()`).

    The tensor counts are compared first: a params.json declaring more layers than the checkpoint holds is refused
    at the cost of the checkpoint, never of what params.json declares."""
    result = TensorCheck(tensors=len(state), parameters=sum(int(t.numel()) for t in state.values()))
    if arch.tensor_count != len(state):
        result.expected_tensors, result.per_layer = arch.tensor_count, arch.tensors_per_layer
        return result
    expected = arch.tensor_shapes()
    result.missing = [k for k in expected if k not in state]
    result.extra = [k for k in state if k not in expected]
    for key, shape in expected.items():
        if key in state and tuple(state[key].shape) != shape:
            result.wrong_shape.append((key, tuple(state[key].shape), shape))
    dtypes = [dtype_name(t.dtype) for t in state.values()]
    want = facts.dtype if facts and facts.dtype else (max(set(dtypes), key=dtypes.count) if dtypes else None)
    result.dtype = want
    result.wrong_dtype = [
        (k, dtype_name(t.dtype), want) for k, t in state.items() if want and dtype_name(t.dtype) != want
    ]
    if facts:
        if facts.tensors is not None and facts.tensors != result.tensors:
            result.facts.append(f"{result.tensors} tensors, the manifest says {facts.tensors}")
        if facts.parameters is not None and facts.parameters != result.parameters:
            result.facts.append(f"{result.parameters:,} parameters, the manifest says {facts.parameters:,}")
    return result
