"""`m7b convert --to gguf`: a verified release as one GGUF file for llama.cpp and Ollama, with its proof.

The header (metadata, tensor infos) is written by `gguf`, the format's own library; the tensors are streamed by
m7b one row chunk at a time from the mapped checkpoint (bounded private memory: a few chunks, never a whole
tensor), hashed as they are written and read back against what was meant to be there. Names and values are
those of llama.cpp's own tools: the llama architecture as `convert_hf_to_gguf.py` writes Mistral (wq/wk keep the
checkpoint's interleaved rotary rows: the converter undoes the Hugging Face permutation), the types as it and
`llama-quantize` choose them (`gguf_quant.choose_type`), the vocabulary as it writes it (`gguf_tokenizer`).
Beside the file: LICENSE, a Modelfile `ollama create` takes as it is, a model card (README.md).
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from m7b import __version__
from m7b.errors import MismatchError, UnsupportedArchitectureError
from m7b.manifests.architecture import Architecture, MixtureOfExperts
from m7b.progress import ProgressCallback, ProgressEvent, ignore_progress
from m7b.store import GGUF_LAYOUTS

from . import gguf_quant
from .checkpoint_index import TensorRecord, tensor_bytes
from .findings import Finding, Status
from .gguf_quant import FILE_TYPES, GGMLType, choose_type
from .gguf_tokenizer import GGUFVocab
from .hf_layout import model_tags
from .license import APACHE_SPDX, canonical_text

ARCH = "llama"  # llama.cpp runs Mistral 7B as llama (convert_hf_to_gguf.py: MistralForCausalLM -> llama)
LAYOUT_PREFIX = "gguf-"
NO_WINDOW_CONTEXT = (
    4096  # the Modelfile's num_ctx and the card's -c for a model without a window (raise as memory allows)
)
CHUNK_ELEMENTS = 1 << 22  # rows are encoded, written and read back this many elements at a time (16 MiB float32)
MODELFILE = "Modelfile"
_SOURCE_DTYPES = {"bfloat16": np.uint16, "float16": np.float16, "float32": np.float32}

# Checkpoint key -> GGUF name (gguf-py's MODEL_TENSOR names for llama). Layer keys by their suffix; a Mixtral's
# experts (feed_forward.experts.E.wN) are stacked into one (E, rows, cols) tensor per layer and matrix, as
# convert_hf_to_gguf.py stacks them.
_TOP = {
    "tok_embeddings.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "output.weight": "output.weight",
}
_LAYER = {
    "attention.wq.weight": "attn_q.weight",
    "attention.wk.weight": "attn_k.weight",
    "attention.wv.weight": "attn_v.weight",
    "attention.wo.weight": "attn_output.weight",
    "feed_forward.w1.weight": "ffn_gate.weight",
    "feed_forward.w2.weight": "ffn_down.weight",
    "feed_forward.w3.weight": "ffn_up.weight",
    "feed_forward.gate.weight": "ffn_gate_inp.weight",
    "attention_norm.weight": "attn_norm.weight",
    "ffn_norm.weight": "ffn_norm.weight",
}
_EXPERTS = {"w1": "ffn_gate_exps.weight", "w2": "ffn_down_exps.weight", "w3": "ffn_up_exps.weight"}
_LAYER_KEY = re.compile(r"^layers\.(\d+)\.(.+)$")
_EXPERT_KEY = re.compile(r"^layers\.(\d+)\.feed_forward\.experts\.(\d+)\.(w[123])\.weight$")


def gguf_name(key: str) -> str:
    """The GGUF tensor a checkpoint key goes into (an expert's matrix: its layer's stacked tensor)."""
    if key in _TOP:
        return _TOP[key]
    expert = _EXPERT_KEY.match(key)
    if expert:
        return f"blk.{expert.group(1)}.{_EXPERTS[expert.group(3)]}"
    m = _LAYER_KEY.match(key)
    if not m or m.group(2) not in _LAYER:
        raise KeyError(f"no GGUF name for checkpoint key {key!r}")
    return f"blk.{m.group(1)}.{_LAYER[m.group(2)]}"


def gguf_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
    """Every GGUF tensor of the architecture with its (numpy-order) shape, in the checkpoint's key order; a stacked
    expert tensor is (num_experts, rows, cols)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for key, shape in arch.tensor_shapes().items():
        name = gguf_name(key)
        if _EXPERT_KEY.match(key):
            count = shapes[name][0] + 1 if name in shapes else 1
            shapes[name] = (count, *shape)
        else:
            shapes[name] = shape
    return shapes


def file_type_of(layout: str) -> str:
    return layout.removeprefix(LAYOUT_PREFIX)


def gguf_filename(label: str, file_type: str) -> str:
    """`<release>-<TYPE>.gguf` (llama.cpp's naming), the label reduced to characters every file system takes."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip(".-")[:100] or "model"
    return f"{stem}-{file_type.upper()}.gguf"


def context_note(arch: Architecture) -> str:
    """What llama.cpp cannot express of the release, said by convert, the card, the metadata and the Modelfile."""
    w = arch.sliding_window
    if w is None:
        return (
            f"llama.cpp attends to the whole context, as the release does (up to {arch.max_positions:,} tokens); the "
            f"Modelfile's num_ctx and the card's `-c` say {NO_WINDOW_CONTEXT:,}: raise them as memory allows"
        )
    return (
        f"llama.cpp attends to the whole context, where the release attends through a {w:,}-token sliding window: "
        f"up to {w:,} tokens of context (the Modelfile's num_ctx, `llama-cli -c {w}`) the two are the same, "
        "beyond that llama.cpp's output differs from the release's"
    )


def run_context(arch: Architecture) -> int:
    """The context the Modelfile and the card run with: the window, else NO_WINDOW_CONTEXT (capped by the model's)."""
    return arch.sliding_window or min(NO_WINDOW_CONTEXT, arch.max_positions)


@dataclass(frozen=True)
class Proof:
    """What the GGUF's metadata says the file came from."""

    name: str
    info_hash: str | None
    checkpoint_sha256: str
    verdict: str | None
    checkpoint_file: str = "consolidated.00.pth"  # the release's checkpoint file, as it ships


@dataclass(frozen=True)
class _Planned:
    name: str
    shape: tuple[int, ...]
    kind: GGMLType
    records: tuple[TensorRecord, ...]  # one, or a layer's experts in order (stacked)

    @property
    def nbytes(self) -> int:
        return self.kind.nbytes(self.shape)


@dataclass(frozen=True)
class GGUFWritten:
    filename: str
    sha256: str
    tensors: int
    tensor_bytes: int  # as written (quantized)
    types: dict[str, int]  # GGUF type -> how many tensors have it


def size_label(arch: Architecture) -> str:
    """gguf-py's size label as the converter computes it from the tensors: "7.2B", or for a mixture of experts
    "<experts>x<shared + one expert's parameters>" ("8x7.2B")."""
    import gguf

    shared = per_expert = 0
    for name, shape in gguf_shapes(arch).items():
        size = int(np.prod(shape))
        if "_exps." in name:
            per_expert += size // shape[0]
        else:
            shared += size
    experts = arch.moe.num_experts if arch.moe else 0
    return str(gguf.size_label(shared + per_expert * experts, shared, per_expert, experts))


def metadata(arch: Architecture, vocab: GGUFVocab, file_type: str, proof: Proof) -> list[tuple[str, Any, str]]:
    """(key, value, gguf value type) in the order the converter writes them, then m7b's proof under `m7b.*`."""
    import gguf

    kv: list[tuple[str, Any, str]] = [
        ("general.type", "model", "str"),
        ("general.name", proof.name, "str"),
        ("general.size_label", size_label(arch), "str"),
        ("general.license", APACHE_SPDX.lower(), "str"),
        ("general.tags", [*model_tags(arch), "text-generation"], "arr"),  # the hf card's, as the converter reads it
        (f"{ARCH}.block_count", arch.n_layers, "u32"),
        (f"{ARCH}.context_length", arch.max_positions, "u32"),  # max_position_embeddings of m7b's hf config.json
        (f"{ARCH}.embedding_length", arch.dim, "u32"),
        (f"{ARCH}.feed_forward_length", arch.hidden_dim, "u32"),
        (f"{ARCH}.attention.head_count", arch.n_heads, "u32"),
        (f"{ARCH}.attention.head_count_kv", arch.n_kv_heads, "u32"),
        (f"{ARCH}.rope.freq_base", arch.effective_rope_theta, "f32"),
        (f"{ARCH}.attention.layer_norm_rms_epsilon", arch.norm_eps, "f32"),
        *(
            [
                (f"{ARCH}.expert_count", arch.moe.num_experts, "u32"),
                (f"{ARCH}.expert_used_count", arch.moe.num_experts_per_tok, "u32"),
            ]
            if arch.moe
            else []
        ),
        (f"{ARCH}.attention.key_length", arch.head_dim, "u32"),
        (f"{ARCH}.attention.value_length", arch.head_dim, "u32"),
        ("general.file_type", FILE_TYPES[file_type][0], "u32"),
        (f"{ARCH}.vocab_size", arch.vocab_size, "u32"),
        (f"{ARCH}.rope.dimension_count", arch.head_dim, "u32"),
        ("general.quantization_version", gguf.GGML_QUANT_VERSION, "u32"),
        ("tokenizer.ggml.model", "llama", "str"),
        ("tokenizer.ggml.pre", "default", "str"),
        ("tokenizer.ggml.tokens", vocab.tokens, "arr"),
        ("tokenizer.ggml.scores", vocab.scores, "f32arr"),
        ("tokenizer.ggml.token_type", vocab.types, "i32arr"),
        ("tokenizer.ggml.bos_token_id", vocab.bos_id, "u32"),
        ("tokenizer.ggml.eos_token_id", vocab.eos_id, "u32"),
        ("tokenizer.ggml.unknown_token_id", vocab.unk_id, "u32"),
        ("tokenizer.ggml.add_bos_token", vocab.add_bos, "bool"),
        ("tokenizer.ggml.add_sep_token", False, "bool"),
        ("tokenizer.ggml.add_eos_token", vocab.add_eos, "bool"),
        # the proof: which torrent, which checkpoint, checked by which m7b
        ("m7b.version", __version__, "str"),
        ("m7b.release", proof.name, "str"),
        ("m7b.checkpoint.file", proof.checkpoint_file, "str"),
        ("m7b.checkpoint.sha256", proof.checkpoint_sha256, "str"),
        ("m7b.verify_verdict", proof.verdict or "not verified", "str"),
        *([("m7b.sliding_window", arch.sliding_window, "u32")] if arch.sliding_window is not None else []),
        ("m7b.note", context_note(arch), "str"),
    ]
    if proof.info_hash:
        kv.insert(5, ("general.source.url", f"magnet:?xt=urn:btih:{proof.info_hash}", "str"))
        kv.append(("m7b.torrent.info_hash", proof.info_hash, "str"))
    return kv


def write_gguf(
    path: Path,
    arch: Architecture,
    state: dict[str, TensorRecord],
    view: memoryview,
    vocab: GGUFVocab,
    file_type: str,
    proof: Proof,
    progress: ProgressCallback = ignore_progress,
) -> GGUFWritten:
    """Write the GGUF file `path` (a new file in a temporary folder) from the mapped checkpoint `view`."""
    import gguf

    plan = plan_tensors(arch, state, file_type)
    writer = gguf.GGUFWriter(path, ARCH)
    for key, value, kind in metadata(arch, vocab, file_type, proof):
        _add(writer, key, value, kind)
    for t in plan:
        writer.add_tensor_info(
            t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=gguf.GGMLQuantizationType[t.kind.name]
        )
    total = sum(t.nbytes for t in plan)
    hasher = _Hasher()
    digest = hasher
    done = 0
    back = -1  # a second descriptor, for reading back what was written
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        fh = writer.fout[0]  # type: ignore[index]  # set by write_header_to_file
        fh.flush()
        head = fh.tell()
        back = os.open(path, os.O_RDONLY)
        digest.update(os.pread(back, head, 0))  # the header gguf wrote, a few MB (the vocabulary)
        position = head
        align = writer.data_alignment
        for t in plan:
            position = _pad(fh, position, align, digest)
            for chunk in _encoded_chunks(t, view):
                data = chunk.data.cast("B")
                fh.write(data)
                digest.update(data)
                fh.flush()
                if not _equal(os.pread(back, data.nbytes, position), data):
                    raise MismatchError(
                        f"{path.name}: tensor {t.name} read back differs from what was written; the disk returned "
                        "other bytes — check the disk and convert again"
                    )
                position += data.nbytes
                done += data.nbytes
                progress(ProgressEvent("converting", done, total, item=t.name))
        position = _pad(fh, position, align, digest)
        fh.flush()
        os.fsync(fh.fileno())
    finally:
        writer.close()
        if back >= 0:
            os.close(back)
        sha256 = hasher.close()
    types: dict[str, int] = {}
    for t in plan:
        types[t.kind.name] = types.get(t.kind.name, 0) + 1
    return GGUFWritten(path.name, sha256, len(plan), total, dict(sorted(types.items())))


def plan_tensors(arch: Architecture, state: dict[str, TensorRecord], file_type: str) -> list[_Planned]:
    """The GGUF tensors in the order written, each with its type and the checkpoint records it is made of."""
    experts = arch.moe.num_experts if arch.moe else 0
    groups: dict[str, list[TensorRecord]] = {}
    for key in arch.tensor_shapes():
        record = state[key]
        if record.dtype not in _SOURCE_DTYPES:
            raise MismatchError(
                f"{key} is {record.dtype}; GGUF conversion reads bfloat16, float16 or float32 checkpoints"
            )
        try:
            name = gguf_name(key)
        except KeyError as exc:
            raise UnsupportedArchitectureError(
                f"{key}: this tensor has no GGUF name (llama.cpp's llama architecture: dense Mistral or Mixtral); "
                "convert to native or hf instead"
            ) from exc
        groups.setdefault(name, []).append(record)
    shapes = gguf_shapes(arch)
    return [
        _Planned(name, shapes[name], choose_type(name, shapes[name], file_type, experts), tuple(records))
        for name, records in groups.items()
    ]


def _encoded_chunks(t: _Planned, view: memoryview) -> Iterator[np.ndarray]:
    """The tensor's GGUF bytes, a few rows at a time (each chunk's rows are whole blocks; a stacked tensor is its
    experts' rows one expert after the other)."""
    step = max(1, CHUNK_ELEMENTS // t.shape[-1])
    for record in t.records:
        values = np.frombuffer(tensor_bytes(view, record), dtype=_SOURCE_DTYPES[record.dtype])
        if not values.size:
            continue
        rows = values.reshape(-1, t.shape[-1])
        for start in range(0, rows.shape[0], step):
            yield gguf_quant.encode(rows[start : start + step], t.kind)


class _Hasher:
    """sha256 of what is written, in a second thread (the other core), as safetensors_out hashes: `update` hands it
    a buffer (at most two in flight), `close` waits and gives the digest (or raises what the thread met)."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.inbox: queue.Queue[bytes | memoryview | None] = queue.Queue(maxsize=2)
        self.failure: list[BaseException] = []
        self.worker = threading.Thread(target=self._run, daemon=True, name="m7b-sha256-gguf")
        self.worker.start()

    def _run(self) -> None:
        while (item := self.inbox.get()) is not None:
            try:
                self.digest.update(item)
            except BaseException as exc:  # raised by close()
                self.failure.append(exc)

    def update(self, data: bytes | memoryview) -> None:
        self.inbox.put(data)

    def close(self) -> str:
        self.inbox.put(None)
        self.worker.join()
        if self.failure:
            raise self.failure[0]
        return self.digest.hexdigest()


def _equal(a: bytes, b: memoryview) -> bool:
    """Bytes read back against those written, 64 bits at a time (a memoryview compares byte by byte)."""
    word = np.uint64 if len(a) % 8 == 0 else np.uint8
    return len(a) == b.nbytes and bool(np.array_equal(np.frombuffer(a, word), np.frombuffer(b, word)))


def _pad(fh: Any, position: int, align: int, digest: Any) -> int:
    pad = -position % align
    if pad:
        fh.write(b"\0" * pad)
        digest.update(b"\0" * pad)
    return position + pad


def _add(writer: Any, key: str, value: Any, kind: str) -> None:
    import gguf

    if kind == "str":
        writer.add_string(key, value)
    elif kind == "u32":
        writer.add_uint32(key, int(value))
    elif kind == "f32":
        writer.add_float32(key, float(value))
    elif kind == "bool":
        writer.add_bool(key, bool(value))
    elif kind == "arr":
        writer.add_array(key, value)
    elif kind == "f32arr":
        writer.add_key_value(key, value, gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.FLOAT32)
    elif kind == "i32arr":
        writer.add_key_value(key, value, gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.INT32)
    else:  # pragma: no cover - the table above names only these
        raise ValueError(kind)


def modelfile(gguf_file: str, arch: Architecture) -> str:
    """An Ollama Modelfile for the folder: `ollama create NAME -f Modelfile` takes it as it is."""
    license_text = canonical_text().decode("utf-8").replace('"""', "'''")
    return (
        f"# Written by m7b {__version__}: `ollama create <name> -f Modelfile` in this folder.\n"
        f"# {context_note(arch)}.\n"
        f"FROM ./{gguf_file}\n"
        'TEMPLATE """{{ .Prompt }}"""\n'
        f"PARAMETER num_ctx {run_context(arch)}\n"
        f'LICENSE """{license_text}"""\n'
    )


def model_card(name: str, written: GGUFWritten, file_type: str, proof: Proof, arch: Architecture) -> str:
    """README.md of the folder (`license: apache-2.0` in its metadata), built with huggingface_hub's ModelCard."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(license="apache-2.0", library_name="gguf", tags=["mistral", "m7b", "gguf", "llama.cpp"])
    source = f"info-hash {proof.info_hash}" if proof.info_hash else "no torrent recorded"
    types = ", ".join(f"{n} {k}" for k, n in written.types.items())
    body = (
        f"# {name} ({file_type.upper()} GGUF)\n\n"
        f"Converted by m7b {__version__} from the torrent release's `{proof.checkpoint_file}` (sha256 "
        f"{proof.checkpoint_sha256}, {source}, verify verdict: {proof.verdict or 'not verified'}) to "
        f"`{written.filename}` for llama.cpp and Ollama: the llama architecture as llama.cpp's "
        f"`convert_hf_to_gguf.py` writes it, {written.tensors} tensors ({types}). "
        f"The GGUF metadata carries the same proof under `m7b.*`.\n\n"
        f"Note: {context_note(arch)}.\n\n"
        f'- llama.cpp: `llama-cli -m {written.filename} -c {run_context(arch)} -p "..."`\n'
        f"- Ollama: `ollama create {name} -f Modelfile`, then `ollama run {name}`\n\n"
        "License: Apache-2.0 (see LICENSE). `SHA256SUMS` lists every file; `provenance.json` says what it came from.\n"
    )
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def summary(written: GGUFWritten, layout: str, arch: Architecture) -> dict[str, object]:
    """What `m7b convert --json` says of a GGUF output beside its files."""
    return {
        "file": written.filename,
        "type": file_type_of(layout),
        "tensor_types": written.types,
        "modelfile": MODELFILE,
        "sliding_window": arch.sliding_window,
        "llama_cpp_attention": "whole context",
        "note": context_note(arch),
    }


def write_folder(
    tmp: Path,
    label: str,
    layout: str,
    arch: Architecture,
    state: dict[str, TensorRecord],
    view: memoryview,
    vocab: GGUFVocab,
    proof: Proof,
    write_text: Callable[[Path, str, dict[str, str]], None],
    progress: ProgressCallback = ignore_progress,
) -> tuple[dict[str, str], GGUFWritten]:
    """The GGUF folder's files in the temporary folder `tmp` (LICENSE and SHA256SUMS are the caller's): the
    .gguf, Modelfile and README.md, with their sha256."""
    file_type = file_type_of(layout)
    filename = gguf_filename(label, file_type)
    written = write_gguf(tmp / filename, arch, state, view, vocab, file_type, proof, progress)
    check_header(tmp / filename, arch, vocab, file_type, proof)
    digests = {filename: written.sha256}
    write_text(tmp / MODELFILE, modelfile(filename, arch), digests)
    write_text(tmp / "README.md", model_card(label, written, file_type, proof, arch), digests)
    return digests, written


def check_header(path: Path, arch: Architecture, vocab: GGUFVocab, file_type: str, proof: Proof) -> None:
    """gguf's own reader must see every key and tensor that was planned, with its value, type and shape."""
    import gguf

    reader = gguf.GGUFReader(path)
    try:
        for key, value, _ in metadata(arch, vocab, file_type, proof):
            field = reader.fields.get(key)
            got = field.contents() if field is not None else None
            if isinstance(value, list) and value and isinstance(value[0], bytes):
                value = [v.decode("utf-8") for v in value]
            if isinstance(value, float) and isinstance(got, float):
                same = np.float32(value) == np.float32(got)
            elif isinstance(value, list) and value and isinstance(value[0], float):
                same = np.array_equal(np.asarray(value, np.float32), np.asarray(got, np.float32))
            else:
                same = got == value
            if not same:
                raise MismatchError(
                    f"{path.name}: read back, metadata {key} differs from what was written — check the disk and "
                    "convert again"
                )
        planned = gguf_shapes(arch)
        found = {t.name: tuple(int(n) for n in reversed(t.shape.tolist())) for t in reader.tensors}
        if found != planned:
            raise MismatchError(
                f"{path.name}: read back, its tensors differ from what was written — check the disk and convert again"
            )
    finally:
        del reader


def guess_layout(root: Path) -> str | None:
    """The gguf layout of a folder holding one `<name>-<TYPE>.gguf`, else None."""
    files = sorted(p.name for p in Path(root).glob("*.gguf") if p.is_file())
    for layout in GGUF_LAYOUTS:
        if len(files) == 1 and files[0].endswith(f"-{file_type_of(layout).upper()}.gguf"):
            return layout
    return None


def check_gguf_folder(root: Path, layout: str) -> list[Finding]:
    """`verify` of a GGUF folder's layout: one .gguf whose tensors are exactly those its own metadata's architecture
    implies, each with the shape and the type llama.cpp's tools give it in a file of that type."""
    import gguf

    file_type = file_type_of(layout)
    files = sorted(p for p in Path(root).glob("*.gguf") if p.is_file())
    if len(files) != 1:
        count = f"found {len(files)}"
        return [Finding("layout", Status.MISSING, f"{root}: expected one .gguf file, {count} — convert again")]
    path = files[0]
    try:
        reader = gguf.GGUFReader(path)
        fields = {k: reader.fields[k].contents() for k in reader.fields if not k.startswith("tokenizer.ggml.")}
        experts, window = fields.get(f"{ARCH}.expert_count"), fields.get("m7b.sliding_window")
        moe = MixtureOfExperts(int(experts), int(fields[f"{ARCH}.expert_used_count"])) if experts else None
        arch = Architecture(
            dim=int(fields[f"{ARCH}.embedding_length"]),
            n_layers=int(fields[f"{ARCH}.block_count"]),
            head_dim=int(fields[f"{ARCH}.attention.key_length"]),
            hidden_dim=int(fields[f"{ARCH}.feed_forward_length"]),
            n_heads=int(fields[f"{ARCH}.attention.head_count"]),
            n_kv_heads=int(fields[f"{ARCH}.attention.head_count_kv"]),
            norm_eps=float(fields[f"{ARCH}.attention.layer_norm_rms_epsilon"]),
            sliding_window=int(window) if window is not None else None,
            vocab_size=int(fields[f"{ARCH}.vocab_size"]),
            moe=moe,
        )
        per_layer = 10 if moe else 9  # (a Mixtral layer: the gate and three stacked expert tensors)
        if not 0 < arch.n_layers * per_layer + 3 <= len(reader.tensors) + 3 * per_layer:  # no more than it holds
            raise ValueError(f"block_count {arch.n_layers} for {len(reader.tensors)} tensors")
        found = {
            t.name: (tuple(int(n) for n in reversed(t.shape.tolist())), t.tensor_type.name) for t in reader.tensors
        }
    except Exception as exc:  # a damaged file: gguf's reader raises whatever its parse meets
        return [
            Finding(
                "layout",
                Status.INVALID,
                f"{path.name}: not a GGUF file m7b wrote ({type(exc).__name__}: {str(exc)[:200]}) — convert again",
                path.name,
            )
        ]
    if fields.get("general.architecture") != ARCH or fields.get("general.file_type") != FILE_TYPES[file_type][0]:
        return [
            Finding(
                "layout", Status.MISMATCH, f"{path.name}: not a {ARCH} {file_type} GGUF file — convert again", path.name
            )
        ]
    experts = arch.moe.num_experts if arch.moe else 0
    planned = {n: (s, choose_type(n, s, file_type, experts).name) for n, s in gguf_shapes(arch).items()}
    if found != planned:
        wrong = sorted(set(found.items()) ^ set(planned.items()))[:3]
        return [
            Finding(
                "layout",
                Status.MISMATCH,
                f"{path.name}: its tensors are not those of a {arch.n_layers}-layer "
                f"{file_type} model (e.g. {wrong}) — convert again",
                path.name,
            )
        ]
    return [
        Finding(
            "layout",
            Status.OK,
            f"{path.name}: {len(found)} tensors with the names, shapes and types a "
            f"{file_type} GGUF of its architecture has",
            path.name,
        )
    ]
