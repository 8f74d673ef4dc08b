"""Property-based fuzzing of the readers of outside data this side of m7b owns: params.json, tokenizer.model, the
checkpoint's zip and pickle inspection, a converted safetensors file, and manifest TOML. Whatever the bytes, only an
M7bError escapes, with its documented exit code, and nothing is written beside the input. Budget: the `ci` profile
(tests/conftest.py); `M7B_FUZZ=long` or `--hypothesis-profile=long` for a campaign."""

from __future__ import annotations

import io
import json
import pickle
import random
import struct
import tomllib
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from m7b.errors import EXIT_CODES, InvalidInputError, M7bError, MismatchError, NotFoundError, UnsafeError
from m7b.manifests.architecture import REQUIRED_INT, load_params
from m7b.manifests.loader import BUNDLED_DIR, parse_manifest
from m7b.runtime.weights import load_state_dict
from m7b.verify.checkpoint_index import index_checkpoint
from m7b.verify.tokenizer_model import load_sentencepiece

DOCUMENTED = set(EXIT_CODES) - {0, 1, 2, 130, 141}


def refused_or_ok(fn: Callable[[], Any], allowed: tuple[type[M7bError], ...], folder: Path) -> None:
    """`fn()` returns, or raises one of `allowed` with its documented code; the folder holds no new file."""
    before = sorted(p.name for p in folder.iterdir())
    try:
        fn()
    except M7bError as exc:
        assert isinstance(exc, allowed), f"{type(exc).__name__}: {exc}"
        assert exc.exit_code in DOCUMENTED and str(exc)
    assert sorted(p.name for p in folder.iterdir()) == before


@pytest.fixture
def box(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _fresh(box: Path) -> Path:
    for p in box.iterdir():
        p.unlink()
    return box


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
field_values = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(alphabet=st.characters(categories=["Nd", "No", "Zs"]), max_size=12)
    | json_values
)
params_docs = st.fixed_dictionaries(
    {k: st.integers(1, 64) | st.integers(1, 64) | field_values for k in REQUIRED_INT}
    | {"norm_eps": st.just(1e-5) | field_values},
    optional={k: field_values for k in ("rope_theta", "moe", "sliding_window", "max_seq_len")},
)


@pytest.mark.slow
@given(doc=params_docs | json_values, nesting=st.sampled_from([0, 0, 0, 0, 40, 3000]))
def test_params_json(box: Path, doc: Any, nesting: int) -> None:
    path = _fresh(box) / "params.json"
    text = json.dumps(doc) if not nesting else "[" * nesting + json.dumps(doc) + "]" * nesting
    path.write_text(text, encoding="utf-8")
    refused_or_ok(lambda: load_params(path), (InvalidInputError,), box)


@given(data=st.binary(max_size=4096))
def test_tokenizer_model_bytes(box: Path, data: bytes) -> None:
    path = _fresh(box) / "tokenizer.model"
    path.write_bytes(data)
    refused_or_ok(lambda: load_sentencepiece(path), (InvalidInputError,), box)


@pytest.fixture(scope="module")
def real_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from m7b.synth import synthesize

    return (synthesize(tmp_path_factory.mktemp("tok") / "r", "tiny", seed=0).path / "tokenizer.model").read_bytes()


@given(cut=st.integers(0, 600_000), flips=st.lists(st.tuples(st.integers(0, 600_000), st.integers(0, 255)), max_size=8))
def test_tokenizer_model_mutated(box: Path, real_tokenizer: bytes, cut: int, flips: list[tuple[int, int]]) -> None:
    data = bytearray(real_tokenizer[: cut % (len(real_tokenizer) + 1)])
    for at, value in flips:
        if data:
            data[at % len(data)] = value
    path = _fresh(box) / "tokenizer.model"
    path.write_bytes(bytes(data))
    refused_or_ok(lambda: load_sentencepiece(path), (InvalidInputError,), box)


def _checkpoint(pickle_bytes: bytes, records: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", pickle_bytes)
        zf.writestr("archive/byteorder", b"little")
        for key, data in records.items():
            zf.writestr(f"archive/data/{key}", data)
        zf.writestr("archive/version", b"3\n")
    return buf.getvalue()


CHECKPOINT_ERRORS = (MismatchError, UnsafeError, NotFoundError)


@given(pkl=st.binary(max_size=512), record=st.binary(max_size=64))
def test_pickle_bytes_in_a_valid_zip(box: Path, pkl: bytes, record: bytes) -> None:
    path = _fresh(box) / "consolidated.00.pth"
    path.write_bytes(_checkpoint(pkl, {"0": record}))
    refused_or_ok(lambda: index_checkpoint(path), CHECKPOINT_ERRORS, box)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("ckpt") / "c.pth"
    base = torch.arange(12, dtype=torch.bfloat16)
    torch.save({"a": base.reshape(3, 4).clone(), "b": torch.ones(5, dtype=torch.float32), "c": base[:2].clone()}, path)
    return path.read_bytes()


@given(seed=st.integers(0, 2**32 - 1), flips=st.integers(1, 16), cut=st.booleans())
def test_mutated_real_checkpoint(box: Path, small_checkpoint: bytes, seed: int, flips: int, cut: bool) -> None:
    rng = random.Random(seed)
    data = bytearray(small_checkpoint)
    for _ in range(flips):
        data[rng.randrange(len(data))] = rng.randrange(256)
    if cut:
        del data[rng.randrange(len(data)) :]
    path = _fresh(box) / "consolidated.00.pth"
    path.write_bytes(bytes(data))
    refused_or_ok(lambda: index_checkpoint(path), CHECKPOINT_ERRORS, box)


@given(
    shapes=st.lists(st.lists(st.integers(0, 2**40), max_size=3), min_size=1, max_size=3),
    strides=st.lists(st.lists(st.integers(0, 2**40), max_size=3), min_size=1, max_size=3),
    offsets=st.lists(st.integers(0, 2**40), min_size=1, max_size=3),
    numel=st.integers(0, 2**40),
    shared=st.booleans(),
)
def test_crafted_tensor_layouts(
    box: Path, shapes: list[list[int]], strides: list[list[int]], offsets: list[int], numel: int, shared: bool
) -> None:
    """Well-formed pickles describing arbitrary sizes, strides, offsets and storage sizes over a few-byte record."""
    from m7b.torchzip import _Pickler

    class Rebuild:
        def __init__(self, key: str, shape: list[int], stride: list[int], offset: int) -> None:
            self.args = (key, shape, stride, offset)

        def __reduce__(self) -> tuple:
            key, shape, stride, offset = self.args
            return (torch._utils._rebuild_tensor_v2, (Ref(key), offset, tuple(shape), tuple(stride), False, {}))

    class Ref:
        def __init__(self, key: str) -> None:
            self.key = key

    class Pickler(_Pickler):
        def persistent_id(self, obj: object) -> tuple | None:
            return ("storage", torch.BFloat16Storage, obj.key, "cpu", numel) if isinstance(obj, Ref) else None

    state = {
        f"t{i}": Rebuild("0" if shared else str(i), shape, strides[i % len(strides)], offsets[i % len(offsets)])
        for i, shape in enumerate(shapes)
    }
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(state)
    path = _fresh(box) / "consolidated.00.pth"
    path.write_bytes(_checkpoint(buf.getvalue(), {str(i): b"\0\0" for i in range(len(shapes))}))
    refused_or_ok(lambda: index_checkpoint(path), CHECKPOINT_ERRORS, box)


def _safetensors(header: bytes, body: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header + body


safetensors_headers = st.dictionaries(
    st.text(max_size=6),
    st.fixed_dictionaries(
        {
            "dtype": st.sampled_from(["BF16", "F32", "I64", "XX", ""]) | json_values,
            "shape": st.lists(st.integers(-2, 2**40), max_size=3) | json_values,
            "data_offsets": st.lists(st.integers(-2, 2**40), max_size=3) | json_values,
        }
    )
    | json_values,
    max_size=3,
)


@given(
    header=safetensors_headers,
    raw=st.binary(max_size=64),
    body=st.binary(max_size=64),
    length=st.integers(-1, 2**64 - 1),
)
@pytest.mark.slow
def test_safetensors_header(box: Path, header: Any, raw: bytes, body: bytes, length: int) -> None:
    folder = _fresh(box)
    head = json.dumps(header).encode() if length < 0 else raw
    data = _safetensors(head, body) if length < 0 else struct.pack("<Q", length) + raw + body
    (folder / "consolidated.safetensors").write_bytes(data)
    refused_or_ok(lambda: load_state_dict(folder), (InvalidInputError, MismatchError), box)


@pytest.fixture(scope="module")
def real_manifest() -> dict[str, Any]:
    return tomllib.loads((BUNDLED_DIR / "mistral-7b-v0.1.toml").read_text(encoding="utf-8"))


toml_values = st.recursive(
    st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=20) | st.dates(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=15,
)


@pytest.mark.slow
@given(doc=st.dictionaries(st.text(max_size=12), toml_values, max_size=6))
def test_random_manifest_documents(box: Path, doc: dict[str, Any]) -> None:
    refused_or_ok(lambda: parse_manifest(doc, "fuzz.toml"), (InvalidInputError,), box)


@given(path=st.lists(st.text(max_size=12), min_size=1, max_size=3), value=toml_values)
def test_mutated_real_manifest(box: Path, real_manifest: dict[str, Any], path: list[str], value: Any) -> None:
    doc = pickle.loads(pickle.dumps(real_manifest))
    table = doc
    keys = list(doc)
    for depth, part in enumerate(path[:-1]):
        key = keys[hash(part) % len(keys)] if keys and depth == 0 else part
        if not isinstance(table.get(key), dict):
            break
        table = table[key]
        keys = list(table)
    last = list(table)[hash(path[-1]) % len(table)] if table and len(path[-1]) % 2 else path[-1]
    table[last] = value
    refused_or_ok(lambda: parse_manifest(doc, "fuzz.toml"), (InvalidInputError,), box)
