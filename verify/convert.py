"""`convert_release`: a verified release to safetensors, `native` (Mistral's later layout) or `hf`; `convert`: what a
user typed converted as `m7b convert` does it (the default output folder, a verified sha256 reused, the lock held).

Streaming (one tensor at a time from the mmap'd checkpoint), deterministic (same input, same bytes), atomic
(built in a temporary folder renamed when complete, `SHA256SUMS` written last) and checked (every output tensor
read back and compared bit for bit with its source, the hf permutation undone).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from cryptography.hazmat.primitives.asymmetric import ec

from m7b.atomic import atomic_dir
from m7b.dtypes import BY_NAME
from m7b.errors import InvalidInputError, MismatchError, NotFoundError
from m7b.locks import LockWaitCallback, hold
from m7b.manifests.architecture import Architecture, load_params
from m7b.progress import ProgressCallback, ProgressEvent, ignore_progress
from m7b.release import NoteCallback, Release, ignore_note, release_for, require_present
from m7b.store import CONVERTED_RECORD, GGUF_LAYOUTS, Store, unchanged_since

from . import gguf_out, hf_layout, hf_tokenizer
from .checkpoint import check_tensors
from .checkpoint_index import MappedFile, TensorRecord, mapped, tensor_bytes
from .checkpoint_safetensors import index_release_checkpoint, release_checkpoint
from .gguf_tokenizer import gguf_vocab
from .license import APACHE_SPDX, canonical_text
from .provenance import Source, write_provenance
from .safetensors_out import FileRange, TensorOut, write_safetensors
from .sums import format_sums
from .tokenizer_model import load_sentencepiece

LAYOUTS = ("native", "hf", *GGUF_LAYOUTS)  # gguf-bf16, -f16, -q8_0, -q4_0: verify/gguf_out.py
CHECKPOINT = "consolidated.00.pth"
NATIVE_FILE = "consolidated.safetensors"
HF_PATTERN = "model{suffix}.safetensors"
HF_MAX_SHARD = "5GB"
CHECK_BLOCK = 16 << 20


@dataclass(frozen=True)
class ConvertResult:
    out: Path
    layout: str
    files: dict[str, str]  # name -> sha256, as recorded in SHA256SUMS
    tensors: int
    tensor_bytes: int
    source_sha256: str
    seconds: float
    notes: tuple[str, ...] = ()  # what was left out and why (e.g. a tokenizer.json that failed its check)
    gguf: dict[str, object] | None = None  # a GGUF output: its file, type, tensor types, what llama.cpp cannot express


def file_sha256(path: Path, block: int = 256 << 10) -> str:
    """The file's sha256, read through one small buffer that stays in cache (2.16 GB: 1.4 s; 2.4 s in 16 MiB reads)."""
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(block))
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buffer):
            digest.update(buffer[:n])
    return digest.hexdigest()


def convert_release(
    src: Path,
    out: Path,
    layout: str,
    *,
    name: str | None = None,
    source_sha256: str | None = None,
    max_shard_size: int | str = HF_MAX_SHARD,
    progress: ProgressCallback = ignore_progress,
    info_hash: str | None = None,
    verdict: str | None = None,
) -> ConvertResult:
    """Convert the release folder `src` into the new folder `out` (which must not exist, or be empty).

    `source_sha256` is the checkpoint's sha256 when a verification report already holds it (else it is computed);
    `info_hash` and `verdict` (the torrent's, the verify report's) go into a GGUF file's metadata.
    """
    started = time.monotonic()
    if layout not in LAYOUTS:
        raise InvalidInputError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    src, out = Path(src), Path(out)
    tokenizer = src / "tokenizer.model"
    checkpoint = release_checkpoint(src)  # consolidated.00.pth or consolidated.safetensors: what the release ships
    if not tokenizer.is_file():
        raise NotFoundError(
            f"{tokenizer} not found: a release folder holds {checkpoint.name}, params.json and "
            "tokenizer.model — fetch it first"
        )
    arch = load_params(src / "params.json")
    load_sentencepiece(tokenizer)  # an empty, truncated or garbage tokenizer.model: InvalidInputError, nothing written
    vocab = gguf_vocab(tokenizer, arch.vocab_size) if layout in GGUF_LAYOUTS else None
    # a .pth's pickle walked against the allowlist first, a safetensors header read strictly; no torch involved
    state = index_release_checkpoint(checkpoint, arch)
    check = check_tensors(state, arch)
    if not check.ok:
        raise MismatchError(
            f"{checkpoint}: " + "; ".join(check.problems()) + " — refusing to convert; run "
            "`m7b verify` for the full report"
        )
    source_sha256 = source_sha256 or file_sha256(checkpoint)
    keys = list(arch.tensor_shapes())
    total = sum(state[k].nbytes for k in keys)
    done = [0]

    def written(filename: str) -> Callable[[TensorOut, int], None]:
        def on_tensor(t: TensorOut, offset: int) -> None:
            check_tensor(tmp / filename, t, offset)
            done[0] += t.nbytes
            progress(ProgressEvent("converting", done[0], total, item=t.name))

        return on_tensor

    digests: dict[str, str] = {}
    notes: list[str] = []
    gguf_doc: dict[str, object] | None = None
    with (
        mapped(checkpoint) as source,
        atomic_dir(out) as tmp,
        _ReadBack(source.view, state, arch, layout) as check_tensor,
    ):
        if vocab is not None:  # GGUF: one file, streamed and read back by gguf_out itself
            plan: dict[str, list[TensorOut]] = {}
            metadata: dict[str, dict[str, str]] = {}
            proof = gguf_out.Proof(name or src.name, info_hash, source_sha256, verdict, checkpoint.name)
            gguf_files, gguf_written = gguf_out.write_folder(
                tmp, name or src.name, layout, arch, state, source.view, vocab, proof, _write_text, progress
            )
            digests.update(gguf_files)
            total = gguf_written.tensor_bytes
            notes.append(gguf_out.context_note(arch))
            gguf_doc = gguf_out.summary(gguf_written, layout, arch)
        elif layout == "native":
            plan = {NATIVE_FILE: [_native_tensor(state[k], source) for k in keys]}
            metadata = {
                NATIVE_FILE: {
                    "license": APACHE_SPDX,
                    "source_sha256": source_sha256,
                    "source": checkpoint.name,
                    "format": "pt",
                }
            }
            digests[NATIVE_FILE] = write_safetensors(
                tmp / NATIVE_FILE, plan[NATIVE_FILE], metadata[NATIVE_FILE], written(NATIVE_FILE)
            )
            _copy(src / "params.json", tmp / "params.json", digests)
        else:
            plan = _hf_plan(state, source, keys, arch, max_shard_size)
            metadata = {filename: {"format": "pt"} for filename in plan}
            for filename, tensors in plan.items():
                digests[filename] = write_safetensors(tmp / filename, tensors, metadata[filename], written(filename))
            if len(plan) > 1:
                _write_text(tmp / "model.safetensors.index.json", _hf_index(plan), digests)
            _write_text(
                tmp / "config.json", hf_layout.dumps(hf_layout.config(arch, check.dtype or "bfloat16")), digests
            )
            _write_text(tmp / "generation_config.json", hf_layout.dumps(hf_layout.generation_config()), digests)
            for fname, doc in hf_layout.tokenizer_files().items():
                _write_text(tmp / fname, hf_layout.dumps(doc), digests)
            try:
                _write_text(tmp / "tokenizer.json", hf_tokenizer.build(tokenizer).json, digests)
            except hf_tokenizer.TokenizerConversionError as exc:
                notes.append(str(exc))
            card = hf_layout.model_card(name or src.name, source_sha256, arch, checkpoint.name)
            _write_text(tmp / "README.md", card, digests)
        if vocab is None:  # a GGUF file carries its vocabulary
            _copy(tokenizer, tmp / "tokenizer.model", digests)
        (tmp / "LICENSE").write_bytes(canonical_text())
        digests["LICENSE"] = hashlib.sha256(canonical_text()).hexdigest()
        for filename, tensors in plan.items():
            _check_header(tmp / filename, tensors, metadata[filename])
        (tmp / CONVERTED_RECORD).write_text(format_sums(digests), encoding="utf-8")
    return ConvertResult(
        out,
        layout,
        dict(sorted(digests.items())),
        len(keys),
        total,
        source_sha256,
        time.monotonic() - started,
        tuple(notes),
        gguf_doc,
    )


@dataclass(frozen=True)
class ConvertPlan:
    """A conversion decided but not begun: what is converted, to which layout, where."""

    release: Release
    label: str  # the release's store name, else its folder's name
    layout: str
    out: Path
    verified: bool  # a passing verification report covers the source


@dataclass(frozen=True)
class Conversion:
    name: str
    verified_source: bool
    result: ConvertResult

    def to_json(self) -> dict[str, object]:
        """The document `m7b convert --json` prints."""
        r = self.result
        return {
            "name": self.name,
            "layout": r.layout,
            "out": str(r.out),
            "verified_source": self.verified_source,
            "tensors": r.tensors,
            "tensor_bytes": r.tensor_bytes,
            "source_sha256": r.source_sha256,
            "seconds": round(r.seconds, 3),
            "files": r.files,
            "notes": list(r.notes),
        } | ({"gguf": r.gguf} if r.gguf is not None else {})


def default_out(store: Store, release: Release, layout: str) -> Path:
    """Where a conversion goes unless told: a store release's converted/NAME/LAYOUT (where `m7b run NAME` looks
    first); any other folder's output lies beside it as <folder>-<layout>, so it never stands in the store for an
    unrelated release of the same name."""
    if release.in_store and release.name:
        return store.converted_dir(release.name, layout)
    return release.folder.parent / f"{release.folder.name}-{layout}"


def known_sha256(store: Store, name: str | None, checkpoint: Path) -> str | None:
    """The checkpoint's sha256 from the verification report, if the file is unchanged since."""
    if not name or not store.is_verified(name):
        return None
    try:
        report = json.loads(store.report_path(name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for entry in report.get("files", []):
        if entry.get("path") == checkpoint.name and unchanged_since(checkpoint.parent, entry):
            return entry.get("sha256")
    return None


def plan_convert(
    target: str | Release,
    layout: str = "native",
    store: Store | None = None,
    *,
    out: Path | None = None,
    on_note: NoteCallback = ignore_note,
) -> ConvertPlan:
    """What `target` (a release name, a folder, a magnet, a .torrent, a manifest .toml, or a resolved Release)
    converts to `layout`, and where: `out`, else `default_out`. Refuses a release not on disk."""
    store = store or Store.from_env()
    release = release_for(target, store, on_note)
    release = require_present(release)
    name = release.name if release.in_store else None
    return ConvertPlan(
        release=release,
        label=name or release.folder.name,
        layout=layout,
        out=Path(out) if out is not None else default_out(store, release, layout),
        verified=name is not None and store.is_verified(name),
    )


def run_convert(
    plan: ConvertPlan,
    store: Store | None = None,
    *,
    max_shard_size: int | str = HF_MAX_SHARD,
    wait: bool = True,
    on_wait: LockWaitCallback = lambda holder: None,
    progress: ProgressCallback = ignore_progress,
    sign_key: ec.EllipticCurvePrivateKey | None = None,
) -> Conversion:
    """Carry out `plan` holding the converted output's lock (a second writer waits, reporting the holder through
    `on_wait`, or without `wait` fails at once), reusing the checkpoint's sha256 from a passing verification report
    when the file is unchanged since."""
    store = store or Store.from_env()
    release = plan.release
    name = release.name if release.in_store else None
    lock = store.converted_lock(plan.label, plan.layout)
    with hold(store, lock, f"converted output {plan.label}/{plan.layout}", wait=wait, on_wait=on_wait):
        if plan.out.is_relative_to(store.home):
            store.ensure_dir(plan.out.parent)  # no symlink below the store's home (m7b.owned)
        info_hash = release.info_hash or (release.manifest.torrent.info_hash if release.manifest else None)
        verdict = "ok" if plan.verified else None
        result = convert_release(
            release.folder,
            plan.out,
            plan.layout,
            name=plan.label,
            source_sha256=known_sha256(store, name, _shipped_checkpoint(release.folder)),
            max_shard_size=max_shard_size,
            progress=progress,
            info_hash=info_hash,
            verdict=verdict,
        )
        store.save_converted_record(result.out, converted_record(plan.label, name, result))
        # the provenance (and, with `sign_key`, its OMS signature) travels with the folder (verify/provenance.py)
        source = Source(name, info_hash, result.source_sha256, verdict)
        write_provenance(result.out, plan.label, result.files, source, plan.layout, sign_key)
    return Conversion(plan.label, plan.verified, result)


def _shipped_checkpoint(folder: Path) -> Path:
    """The release's checkpoint for the sha256 lookup; convert_release itself refuses a folder without one."""
    try:
        return release_checkpoint(folder)
    except (NotFoundError, MismatchError):
        return folder / CHECKPOINT


def converted_record(label: str, release: str | None, result: ConvertResult) -> dict[str, object]:
    """What the store keeps of an output convert wrote (`Store.save_converted_record`): what `verify` of that folder
    trusts — its files' sha256 (the folder's own SHA256SUMS must agree), the layout, and the store release it came
    from (whose checkpoint its tensors are compared with)."""
    return {
        "name": label,
        "release": release,
        "layout": result.layout,
        "files": result.files,
        "source_sha256": result.source_sha256,
        "tensors": result.tensors,
    }


def convert(
    target: str | Release,
    layout: str = "native",
    store: Store | None = None,
    *,
    out: Path | None = None,
    max_shard_size: int | str = HF_MAX_SHARD,
    wait: bool = True,
    on_wait: LockWaitCallback = lambda holder: None,
    progress: ProgressCallback = ignore_progress,
    on_note: NoteCallback = ignore_note,
    sign_key: ec.EllipticCurvePrivateKey | None = None,
) -> Conversion:
    """Convert what `target` names as `m7b convert` does: `plan_convert`, then `run_convert`. `store` defaults to
    `Store.from_env()` (M7B_HOME)."""
    store = store or Store.from_env()
    plan = plan_convert(target, layout, store, out=out, on_note=on_note)
    return run_convert(
        plan, store, max_shard_size=max_shard_size, wait=wait, on_wait=on_wait, progress=progress, sign_key=sign_key
    )


def _native_tensor(record: TensorRecord, source: MappedFile) -> TensorOut:
    return TensorOut(
        record.key,
        record.shape,
        record.dtype,
        record.itemsize,
        lambda: tensor_bytes(source.view, record),
        _unchanged(record, source),
    )


def _unchanged(record: TensorRecord, source: MappedFile) -> FileRange | None:
    """The tensor's bytes as they lie in the checkpoint, when they go to the output unchanged (copied in the kernel)."""
    return FileRange(source.fd, record.offset) if record.contiguous else None


def _hf_plan(
    state: dict[str, TensorRecord], source: MappedFile, keys: list[str], arch: Architecture, max_shard_size: int | str
) -> dict[str, list[TensorOut]]:
    """huggingface_hub's sharding plan (file names, which tensor goes where); tensors in checkpoint order.

    The plan is made on the planned outputs' sizes with huggingface_hub's generic splitter (the torch wrapper
    would import torch.distributed to look for DTensors: 0.7 s for nothing here, every tensor has its own storage).
    """
    from huggingface_hub.serialization import split_state_dict_into_shards_factory

    outputs = {t.name: t for t in (_hf_tensor(state[k], source, arch) for k in keys)}
    split = split_state_dict_into_shards_factory(
        outputs, get_storage_size=lambda t: t.nbytes, filename_pattern=HF_PATTERN, max_shard_size=max_shard_size
    )
    plan: dict[str, list[TensorOut]] = {}
    for name, t in outputs.items():
        plan.setdefault(split.tensor_to_filename[name], []).append(t)
    return dict(sorted(plan.items()))


def _hf_tensor(record: TensorRecord, source: MappedFile, arch: Architecture) -> TensorOut:
    heads = hf_layout.rotary_heads(record.key, arch)
    if heads is None:
        return TensorOut(
            hf_layout.hf_key(record.key),
            record.shape,
            record.dtype,
            record.itemsize,
            lambda: tensor_bytes(source.view, record),
            _unchanged(record, source),
        )
    return TensorOut(
        hf_layout.hf_key(record.key),
        record.shape,
        record.dtype,
        record.itemsize,
        lambda: _rows(tensor_bytes(source.view, record), record, heads, hf_layout.permute),
    )


def _rows(raw: memoryview, record: TensorRecord, heads: int, rearrange: Callable) -> memoryview:
    """A 2-D tensor's bytes with its rows rearranged per head (the hf rotary permutation, or its inverse)."""
    import numpy as np

    rows = np.frombuffer(raw, dtype=np.dtype(f"V{record.itemsize}")).reshape(record.shape)
    return np.ascontiguousarray(rearrange(rows, heads)).data.cast("B")


def _hf_index(plan: dict[str, list[TensorOut]]) -> str:
    """The index huggingface_hub's save_torch_state_dict writes: total size and the weight map."""
    weight_map = {t.name: filename for filename, tensors in plan.items() for t in tensors}
    total = sum(t.nbytes for tensors in plan.values() for t in tensors)
    return hf_layout.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})


def _copy(source: Path, target: Path, digests: dict[str, str]) -> None:
    shutil.copyfile(source, target)
    digests[target.name] = file_sha256(target)


def _write_text(path: Path, text: str, digests: dict[str, str]) -> None:
    data = text.encode("utf-8")
    path.write_bytes(data)
    digests[path.name] = hashlib.sha256(data).hexdigest()


class WrittenTensor(Protocol):
    """What the read-back needs of a tensor in an output file: a `TensorOut` being written, or one found in a
    converted folder (`verify/converted.py`)."""

    @property
    def name(self) -> str: ...

    @property
    def nbytes(self) -> int: ...


class _ReadBack:
    """The bit-exact check: each tensor is read back from its file as soon as it is written (mapped through a
    second descriptor) and compared with its bytes in the mapped checkpoint, the hf permutation undone; this runs
    while the hash thread is still hashing, so the check costs little wall time."""

    def __init__(self, view: memoryview, state: dict[str, TensorRecord], arch: Architecture, layout: str) -> None:
        self.view, self.state, self.arch, self.layout = view, state, arch, layout
        self.source_key = {hf_layout.hf_key(k) if layout == "hf" else k: k for k in state}
        self.path: Path | None = None
        self.fh: BinaryIO | None = None

    def __enter__(self) -> _ReadBack:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fh is not None:
            self.fh.close()

    def __call__(self, path: Path, t: WrittenTensor, offset: int) -> None:
        if path != self.path:
            if self.fh is not None:
                self.fh.close()
            self.path, self.fh = path, open(path, "rb", buffering=0)  # noqa: SIM115 (closed on the next file/exit)
        key = self.source_key[t.name]
        heads = hf_layout.rotary_heads(key, self.arch) if self.layout == "hf" else None
        if not self._same_as_source(t, self.state[key], heads, offset):
            raise MismatchError(
                f"{path.name}: tensor {t.name} read back differs from {key} in the source; the disk "
                "returned other bytes than were written — check the disk and convert again"
            )
        # Checked: start writing these pages to disk now (Linux starts writeback of dirty pages on DONTNEED), so the
        # final fsync has little left to wait for and the page cache is not filled with the whole model.
        if hasattr(os, "posix_fadvise") and t.nbytes and self.fh is not None:
            os.posix_fadvise(self.fh.fileno(), offset, t.nbytes, os.POSIX_FADV_DONTNEED)

    def _same_as_source(self, t: WrittenTensor, source: TensorRecord, heads: int | None, offset: int) -> bool:
        """Map tensor `t`'s bytes in the written file and compare them bit for bit with `source` (the mapped
        pages are the page cache's: no copy), 16 MiB at a time as 64-bit words."""
        if not t.nbytes:
            return True
        want = tensor_bytes(self.view, source)
        assert self.fh is not None  # __call__ opened the file this tensor was written to
        base = offset - offset % mmap.ALLOCATIONGRANULARITY
        try:
            mm = mmap.mmap(self.fh.fileno(), offset - base + t.nbytes, offset=base, access=mmap.ACCESS_READ)
        except ValueError:  # the file is shorter than what was written to it
            return False
        with mm:
            got = memoryview(mm)[offset - base :]
            try:
                if heads is not None:  # a permuted wq/wk: undo the permutation (one copy), then compare
                    return _equal(_rows(got, source, heads, hf_layout.unpermute), want)
                return all(
                    _equal(got[i : i + CHECK_BLOCK], want[i : i + CHECK_BLOCK]) for i in range(0, t.nbytes, CHECK_BLOCK)
                )
            finally:
                got.release()


def _equal(a: memoryview, b: memoryview) -> bool:
    import numpy as np

    word = np.uint64 if len(a) % 8 == 0 else np.uint8
    return len(a) == len(b) and bool(np.array_equal(np.frombuffer(a, word), np.frombuffer(b, word)))


def _check_header(path: Path, tensors: list[TensorOut], metadata: dict[str, str]) -> None:
    """safetensors' own reader must see exactly the names, dtypes, shapes and metadata that were planned."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        described = {name: (f.get_slice(name).get_dtype(), tuple(f.get_slice(name).get_shape())) for name in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        if (
            described != {t.name: (BY_NAME[t.dtype].safetensors, t.shape) for t in tensors}
            or (f.metadata() or {}) != metadata
        ):
            raise MismatchError(
                f"{path.name}: read back, its header differs from what was written — check the disk and convert again"
            )
