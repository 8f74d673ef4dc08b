"""`verify` of a converted folder: vouched for only by the record the store kept when m7b converted it.

A folder's own `SHA256SUMS` proves nothing alone — whoever made the folder wrote it, and a hostile index or a
rewritten `SHA256SUMS` agrees with itself. So the folder's files are compared with the store's record
(`Store.converted_record`, written by `run_convert`), and the `SHA256SUMS` must agree with both; the tensors are
checked against the layout (every tensor of the architecture, in the shard the hf index says, with its shape and
one dtype), and when the source release is in the store and verified, each tensor's bytes against the source's
(convert's own bit-for-bit comparison, the hf wq/wk permutation undone). A folder with no record is `unvouched`:
its self-consistency is shown, but the verdict says nothing vouches for it (exit 5).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from m7b.dtypes import BY_NAME
from m7b.errors import InvalidInputError, M7bError, MismatchError
from m7b.locks import hold
from m7b.manifests.architecture import Architecture, architecture_from_mapping, load_params
from m7b.paths import path_problem
from m7b.progress import ProgressCallback, ignore_progress
from m7b.store import CONVERTED_RECORD, GGUF_LAYOUTS, LAYOUTS, Store

from . import gguf_out, hf_layout
from .checkpoint_index import mapped
from .checkpoint_safetensors import CHECKPOINT_NAMES, index_release_checkpoint, release_checkpoint
from .convert import NATIVE_FILE, _ReadBack
from .findings import Finding, Status, status_for, verdict
from .provenance import CONVERTED_SIGNATURE, NOT_IN_SUMS, signed_source
from .report import VerifyReport
from .signature import SignatureCheck, Trust
from .sums import parse_sums, verify_converted

HF_INDEX = "model.safetensors.index.json"
MAX_HEADER = 100 << 20  # safetensors' own bound on a header
MAX_JSON = 16 << 20  # config.json, the index: a few kB to a few MB
_BY_CODE = {d.safetensors: d for d in BY_NAME.values()}


@dataclass(frozen=True)
class Placed:
    """A tensor in an output file: its name, file, absolute offset of its bytes and their length."""

    name: str
    file: str
    offset: int
    nbytes: int


def verify_converted_folder(
    root: Path, store: Store, *, trust: Trust | None = None, progress: ProgressCallback = ignore_progress
) -> VerifyReport:
    """Check the converted folder `root` against the store's record of it (see the module's docstring). With
    `trust` naming a signature (`provenance.sig`, written by `m7b convert --sign-key`), it is checked against the
    sha256 of the same read; a valid one by a key the user trusts vouches for a folder the store has no record of,
    and its provenance names the release it came from."""
    root = Path(root).resolve()
    record = store.converted_record(root)
    with ExitStack() as stack:
        if record is not None:
            name, layout = str(record.get("name")), str(record.get("layout"))
            lock = store.converted_lock(name, layout)
            what = f"converted output {name}/{layout}"
            stack.enter_context(hold(store, lock, what, shared=True, purpose="verified", role="verify"))
        own = verify_converted(root, name=_label(root, record), progress=progress)
        findings = list(own.findings)
        digests = {f.path: f.sha256 for f in own.files if f.path not in NOT_IN_SUMS}
        signed = _signature(root, own, trust, vouched_by_record=record is not None)
        provenance: dict[str, Any] | None = None
        if signed is not None:
            findings.append(signed.finding)
            provenance, more = _provenance(store, signed, record)
            findings += more
        # a signature vouches for a folder the store has no record of only when it is valid, by a trusted key, and
        # carries m7b's provenance that nothing contradicts (a release's own signature over the same files does not)
        vouched = signed is not None and signed.verdict == "signed" and provenance is not None
        vouched = vouched and not any(
            f.check == "provenance" and f.status != Status.OK and f.status != Status.NOTE for f in findings
        )
        if record is None and not vouched:
            findings.append(_unvouched(store, root, own))
        elif record is not None:
            findings += _against_record(store, root, record, digests)
        recorded_layout = record.get("layout") if record else None
        kind = recorded_layout if isinstance(recorded_layout, str) else _guess_layout(root)
        placed, shape_findings = check_layout(root, kind)
        findings += shape_findings
        source = _source_release(store, root, record) or _provenance_release(store, provenance)
        if placed is not None and source is not None and kind in LAYOUTS:
            findings += _against_source(store, root, str(kind), placed, source)
    doc = signed.to_json() | {"provenance": provenance} if signed else None
    return replace(own, findings=findings, verdict=verdict(findings), signature=doc)


def _signature(root: Path, own: VerifyReport, trust: Trust | None, vouched_by_record: bool) -> SignatureCheck | None:
    """The folder's signature checked against the sha256 of its files from the same read (SHA256SUMS, a few hundred
    bytes, hashed on its own). A key the user did not name vouches for nothing: noted beside the store's record,
    else the folder stays unvouched (exit 5)."""
    if trust is None or (trust.signature is None and not trust.require):
        return None
    digests = {f.path: f.sha256 for f in own.files if f.sha256 and f.path != CONVERTED_SIGNATURE}
    sums = root / CONVERTED_RECORD
    if sums.is_file() and sums.stat().st_size <= MAX_JSON:
        digests[CONVERTED_RECORD] = hashlib.sha256(sums.read_bytes()).hexdigest()
    checked = trust.check(digests)
    if checked.verdict == "unknown-key":
        status = Status.NOTE if vouched_by_record else Status.UNVOUCHED
        checked = replace(checked, finding=replace(checked.finding, status=status))
    return checked


def _provenance(
    store: Store, signed: SignatureCheck, record: dict[str, Any] | None
) -> tuple[dict[str, Any] | None, list[Finding]]:
    """The signed provenance's source, checked against the store's record and the store's copy of that release."""
    if signed.verdict != "signed":
        return None, []
    try:
        source = signed_source(signed.predicate)
    except M7bError as exc:
        return None, [Finding("provenance", status_for(exc), str(exc))]
    if source is None:
        return None, [Finding("provenance", Status.NOTE, "the signature carries no provenance (not m7b's)")]
    claimed = source.get("checkpoint_sha256")
    out: list[Finding] = []
    if record is not None and record.get("source_sha256") not in (None, claimed):
        out.append(
            Finding(
                "provenance",
                Status.MISMATCH,
                f"the signed provenance says converted from checkpoint sha256 {claimed}, but m7b's record of this "
                f"conversion says {record.get('source_sha256')}: the folder is not the one signed — convert again",
            )
        )
    name = _provenance_release(store, source)
    known = _verified_checkpoint(store, name) if name else None
    if known is not None and known != claimed:
        out.append(
            Finding(
                "provenance",
                Status.MISMATCH,
                f"the signed provenance says converted from a checkpoint with sha256 {claimed}, but release {name} "
                f"in the store (info-hash {source.get('info_hash')}) has {known}: the folder was converted from "
                "other weights than that release's — do not use it as that release",
                detail={"expected": known, "found": claimed},
            )
        )
    if not out and known is None:
        out.append(
            Finding(
                "provenance",
                Status.NOTE,
                f"says converted from release {source.get('release') or '?'} (checkpoint sha256 {claimed}), signed by "
                f"sha256:{signed.signer}; not checked: that release is not verified in this store — fetch and verify "
                "it to check the claim",
                detail=source,
            )
        )
    if not out:
        out.append(
            Finding(
                "provenance",
                Status.OK,
                f"converted from release {source.get('release') or '?'} (info-hash {source.get('info_hash') or '?'}, "
                f"checkpoint sha256 {claimed}, verify verdict {source.get('verify_verdict') or 'none'}) to "
                f"{source.get('layout') or '?'}, signed by sha256:{signed.signer}",
                detail=source,
            )
        )
    return source, out


def _provenance_release(store: Store, source: dict[str, Any] | None) -> str | None:
    """The store release a signed provenance names: by the info-hash it records, else by name."""
    if not source:
        return None
    info_hash, name = source.get("info_hash"), source.get("release")
    recorded = store.recorded_releases()
    by_hash = next((n for n, h in recorded.items() if info_hash and h == info_hash), None)
    if by_hash is not None:
        return by_hash
    if not isinstance(name, str) or path_problem(name) is not None:
        return None
    try:
        return name if name in recorded or store.release_dir(name).is_dir() else None
    except M7bError:  # not a name the store could hold
        return None


def _verified_checkpoint(store: Store, name: str) -> str | None:
    """The checkpoint's sha256 in the store's passing report of release `name` (None without one)."""
    if not store.is_verified(name):
        return None
    try:
        report = json.loads(store.report_path(name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = report.get("files") if isinstance(report, dict) else None
    for entry in files if isinstance(files, list) else []:
        if isinstance(entry, dict) and entry.get("path") in CHECKPOINT_NAMES:
            value = entry.get("sha256")
            return value if isinstance(value, str) else None
    return None


def _label(root: Path, record: dict[str, Any] | None) -> str:
    return str(record["name"]) if record and isinstance(record.get("name"), str) else root.parent.name


def _unvouched(store: Store, root: Path, own: VerifyReport) -> Finding:
    consistent = all(f.status == Status.OK for f in own.findings)
    said = (
        f"its {CONVERTED_RECORD} agrees with its files, but whoever made the folder wrote that {CONVERTED_RECORD} too"
        if consistent
        else f"and its own {CONVERTED_RECORD} does not agree with its files either"
    )
    return Finding(
        "record",
        Status.UNVOUCHED,
        f"nothing vouches for {root}: the store {store.home} keeps no record of m7b converting it (copied from "
        f"elsewhere, moved, or converted before m7b kept records); {said}. Convert the release yourself "
        "(`m7b convert NAME --to LAYOUT`) and use that output",
        None,
        {"record": str(store.converted_record_path(root))},
    )


def _against_record(store: Store, root: Path, record: dict[str, Any], digests: dict[str, str | None]) -> list[Finding]:
    """Every file as the store recorded it when m7b converted it, and SHA256SUMS the same list."""
    where = store.converted_record_path(root)
    recorded = {str(k): str(v) for k, v in record["files"].items()}
    out: list[Finding] = []
    for rel, expected in sorted(recorded.items()):
        found = digests.get(rel)
        if found is None:
            out.append(
                Finding(
                    "record",
                    Status.MISSING,
                    f"{rel}: missing; m7b's record of this conversion ({where}) lists it — convert again",
                    rel,
                )
            )
        elif found != expected:
            out.append(
                Finding(
                    "record",
                    Status.MISMATCH,
                    f"{rel}: sha256 {found}, m7b's record of this conversion ({where}) says {expected}; the file "
                    "changed since m7b converted it — convert again",
                    rel,
                    {"expected": expected, "found": found},
                )
            )
    for rel in sorted(set(digests) - set(recorded)):
        out.append(
            Finding(
                "record",
                Status.MISMATCH,
                f"{rel}: m7b's record of this conversion ({where}) has no such "
                "file; a converted folder holds only what convert wrote — remove it or convert again",
                rel,
            )
        )
    try:
        listed = parse_sums(root / CONVERTED_RECORD)
    except M7bError:
        listed = None  # the folder's own check has said why
    if listed is not None and listed != recorded:
        out.append(
            Finding(
                "record",
                Status.MISMATCH,
                f"{CONVERTED_RECORD} differs from m7b's record of this conversion ({where}): it was rewritten since "
                "m7b converted the folder — convert again",
                CONVERTED_RECORD,
            )
        )
    if not out:
        out.append(
            Finding(
                "record",
                Status.OK,
                f"every file as m7b recorded it when it converted {record.get('name')} to {record.get('layout')}",
                None,
                {"record": str(where)},
            )
        )
    return out


def _guess_layout(root: Path) -> str | None:
    if (root / NATIVE_FILE).is_file():
        return "native"
    if (root / "config.json").is_file():
        return "hf"
    return gguf_out.guess_layout(root)


def _read_json(path: Path) -> Any:
    if path.stat().st_size > MAX_JSON:
        raise InvalidInputError(f"{path.name}: {path.stat().st_size:,} bytes, more than {MAX_JSON:,}")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise InvalidInputError(f"{path.name} is not valid JSON ({str(exc)[:200]})") from exc


def _architecture(root: Path, layout: str) -> tuple[Architecture, str | None]:
    """The architecture the folder's own parameters imply, and the dtype they name (hf's config.json)."""
    if layout == "native":
        return load_params(root / "params.json"), None
    doc = _read_json(root / "config.json")
    if not isinstance(doc, dict):
        raise InvalidInputError("config.json is not a JSON object")
    keys = {
        "dim": "hidden_size",
        "n_layers": "num_hidden_layers",
        "head_dim": "head_dim",
        "hidden_dim": "intermediate_size",
        "n_heads": "num_attention_heads",
        "n_kv_heads": "num_key_value_heads",
        "norm_eps": "rms_norm_eps",
        "sliding_window": "sliding_window",
        "vocab_size": "vocab_size",
        "rope_theta": "rope_theta",
    }
    params: dict[str, Any] = {ours: doc[theirs] for ours, theirs in keys.items() if theirs in doc}
    if "num_local_experts" in doc or "num_experts_per_tok" in doc:  # MixtralForCausalLM
        params["moe"] = {
            "num_experts": doc.get("num_local_experts"),
            "num_experts_per_tok": doc.get("num_experts_per_tok"),
        }
    dtype = doc.get("torch_dtype", doc.get("dtype"))
    return architecture_from_mapping(params, str(root / "config.json")), dtype if isinstance(dtype, str) else None


def read_safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...], int, int]]:
    """{name: (dtype code, shape, start, end)} of a safetensors file, offsets absolute in the file; InvalidInputError
    for a header that is not one (bounded: at most MAX_HEADER bytes are read)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < length <= min(MAX_HEADER, size - 8):
            raise InvalidInputError(f"{path.name}: not a safetensors file (header length {length})")
        raw = fh.read(length)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise InvalidInputError(f"{path.name}: its safetensors header is not JSON ({str(exc)[:200]})") from exc
    if not isinstance(doc, dict):
        raise InvalidInputError(f"{path.name}: its safetensors header is not a JSON object")
    base = 8 + length
    out: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
    for name, entry in doc.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            ok = isinstance(dtype, str) and all(type(n) is int and n >= 0 for n in (*shape, start, end))
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok or not start <= end or base + end > size:
            raise InvalidInputError(f"{path.name}: tensor {name!r} has a malformed header entry")
        out[name] = (dtype, shape, base + start, base + end)
    return out


def check_layout(root: Path, layout: object) -> tuple[dict[str, Placed] | None, list[Finding]]:
    """The tensors the layout and the folder's parameters imply, each where the index says, with its shape and one
    dtype: the tensors by their checkpoint key (None when the layout could not be checked), and the findings."""
    if layout in GGUF_LAYOUTS:
        return None, gguf_out.check_gguf_folder(root, str(layout))
    if layout not in LAYOUTS:
        return None, [
            Finding(
                "layout",
                Status.INVALID,
                f"{root}: neither {NATIVE_FILE} nor config.json: not a "
                "folder m7b converted — convert the release again",
            )
        ]
    try:
        return _check_layout(root, str(layout))
    except M7bError as exc:
        return None, [Finding("layout", status_for(exc), str(exc))]
    except OSError as exc:
        return None, [Finding("layout", Status.MISSING, f"{exc.filename}: {exc.strerror}")]


def _check_layout(root: Path, layout: str) -> tuple[dict[str, Placed] | None, list[Finding]]:
    arch, dtype_name = _architecture(root, layout)
    if layout == "native":
        shards, index = [NATIVE_FILE], None
    else:
        shards = sorted(p.name for p in root.glob("model*.safetensors") if p.is_file())
        index = _read_json(root / HF_INDEX) if (root / HF_INDEX).is_file() else None
    problems: list[Finding] = []
    if index is not None:
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise InvalidInputError(f"{HF_INDEX}: no weight_map of tensor name -> shard file")
        named = set(weight_map.values())
        if named != set(shards):
            problems.append(
                Finding(
                    "layout",
                    Status.MISMATCH,
                    f"{HF_INDEX} names the shards {sorted(named)}, the folder holds {shards} — convert again",
                    HF_INDEX,
                )
            )
            return None, problems
    elif layout == "hf" and shards != ["model.safetensors"]:
        raise MismatchError(f"{root}: shards {shards} without {HF_INDEX} (one shard is model.safetensors)")
    headers = {shard: read_safetensors_header(root / shard) for shard in shards}
    found = {name: (shard, entry) for shard, header in headers.items() for name, entry in header.items()}
    if len(found) != arch.tensor_count or sum(map(len, headers.values())) != len(found):
        raise MismatchError(
            f"the shards hold {sum(map(len, headers.values()))} tensors, the parameters imply {arch.tensor_count} "
            "— convert again"
        )
    rename = hf_layout.hf_key if layout == "hf" else (lambda key: key)
    expected = {rename(key): (key, shape) for key, shape in arch.tensor_shapes().items()}
    dtypes = {entry[0] for _, entry in found.values()}
    want_dtype = BY_NAME[dtype_name].safetensors if dtype_name in BY_NAME else None
    if len(dtypes) != 1 or (want_dtype is not None and dtypes != {want_dtype}) or not dtypes <= set(_BY_CODE):
        problems.append(
            Finding(
                "layout",
                Status.MISMATCH,
                f"tensor dtypes {sorted(dtypes)}; a converted checkpoint holds one"
                + (f", {want_dtype} as config.json says" if want_dtype else "")
                + " — convert again",
            )
        )
    placed: dict[str, Placed] = {}
    for name in sorted(set(expected) | set(found)):
        key, shape = expected.get(name, (None, None))
        shard, entry = found.get(name, (None, None))
        if key is None or shape is None or shard is None or entry is None:
            where = f"in {shard}" if shard else "in no shard"
            why = "the parameters imply no such tensor" if key is None else "missing"
            problems.append(Finding("layout", Status.MISMATCH, f"tensor {name} ({where}): {why}", shard))
            continue
        if index is not None and index["weight_map"].get(name) != shard:
            said = index["weight_map"].get(name)
            said = f"says {said}" if said else "does not name it"
            problems.append(Finding("layout", Status.MISMATCH, f"tensor {name}: in {shard}, {HF_INDEX} {said}", shard))
        code, got, start, end = entry
        item = _BY_CODE[code].itemsize if code in _BY_CODE else 0
        if got != shape or end - start != math.prod(shape) * item:
            problems.append(
                Finding(
                    "layout",
                    Status.MISMATCH,
                    f"tensor {name} in {shard}: shape {list(got)} ({end - start:,} bytes), the parameters imply "
                    f"{list(shape)}",
                    shard,
                )
            )
            continue
        placed[key] = Placed(name, shard, start, end - start)
    if index is not None and isinstance(index.get("metadata"), dict):
        total = index["metadata"].get("total_size")
        if total is not None and total != sum(p.nbytes for p in placed.values()):
            problems.append(
                Finding(
                    "layout",
                    Status.MISMATCH,
                    f"{HF_INDEX}: total_size {total}, the tensors take {sum(p.nbytes for p in placed.values())}",
                    HF_INDEX,
                )
            )
    if problems:
        return None, problems
    note = (
        f"{len(placed)} tensors, each in the shard {HF_INDEX} names,"
        if index is not None
        else (f"{len(placed)} tensors")
    )
    return placed, [Finding("layout", Status.OK, f"{note} with the shape the parameters imply, one dtype")]


def _source_release(store: Store, root: Path, record: dict[str, Any] | None) -> str | None:
    """The store release the folder was converted from: the record's, else the one whose converted folder it is."""
    if record is not None:
        name = record.get("release")
        return name if isinstance(name, str) else None
    parent, layout = root.parent.name, root.name
    if layout in LAYOUTS and (store.home / "converted").resolve() == root.parent.parent:
        return parent
    return None


def _against_source(store: Store, root: Path, layout: str, placed: dict[str, Placed], name: str) -> list[Finding]:
    """Each tensor bit for bit against the verified source's (hf wq/wk after the same permutation), holding the
    source release's lock shared; a note when the source is not in the store or not verified."""
    lock = store.release_lock(name)
    with hold(store, lock, f"release {name}", shared=True, purpose="verified", role="verify"):
        if not store.is_verified(name):
            return [
                Finding(
                    "source",
                    Status.NOTE,
                    f"the source release {name} has no passing report in the store: its tensors were not compared "
                    f"with the output's (run `m7b verify {name}`, then verify this folder again)",
                )
            ]
        src = store.release_dir(name)
        arch = load_params(src / "params.json")
        checkpoint = release_checkpoint(src)
        state = index_release_checkpoint(checkpoint)
        wrong: list[Finding] = []
        with mapped(checkpoint) as source, _ReadBack(source.view, state, arch, layout) as same:
            for key, where in placed.items():
                if key not in state:
                    wrong.append(Finding("source", Status.MISMATCH, f"{key}: not in the source's checkpoint"))
                    continue
                try:
                    same(root / where.file, where, where.offset)
                except MismatchError:
                    wrong.append(
                        Finding(
                            "source",
                            Status.MISMATCH,
                            f"{where.file}: tensor {where.name} differs from {key} in {name}'s verified "
                            f"{checkpoint.name} — convert again",
                            where.file,
                        )
                    )
    return wrong or [
        Finding("source", Status.OK, f"{len(placed)} tensors bit for bit as in {name}'s verified {checkpoint.name}")
    ]
