"""Property-based fuzzing of the release-checkpoint safetensors reader (`verify/checkpoint_safetensors.py`): from a
valid file, any change to its header's entries, its length field, or its size ends either in records that tile
the data area exactly (every byte owned once, nothing past the end) or in a MismatchError; nothing else escapes,
nothing is allocated from a declared size, and nothing is written beside the input."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from m7b.errors import M7bError, MismatchError
from m7b.verify.checkpoint_safetensors import index_safetensors

TENSORS = {"a": ("BF16", [2, 3], 12), "b": ("F32", [4], 16), "c": ("BF16", [0, 5], 0)}


def valid_header() -> dict[str, Any]:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    at = 0
    for name, (dtype, shape, nbytes) in TENSORS.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [at, at + nbytes]}
        at += nbytes
    return header


entry_values = st.one_of(
    st.integers(-3, 2**64),
    st.sampled_from(["BF16", "F32", "F16", "I8", "U8", "BOOL", "F8_E4M3", "", "bf16"]),
    st.lists(st.integers(-3, 2**50), max_size=10),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)

mutation = st.tuples(
    st.sampled_from([*TENSORS, "__metadata__", "new"]),
    st.sampled_from(["dtype", "shape", "data_offsets", "extra", "whole"]),
    entry_values,
)


@pytest.mark.slow
@given(
    mutations=st.lists(mutation, max_size=4),
    length_delta=st.sampled_from([0, 0, 0, -1, 1, 8, -8, 2**40]),
    tail=st.binary(max_size=24),
    cut=st.integers(0, 40),
)
def test_any_header_change_is_refused_or_tiles_the_file(
    tmp_path_factory: pytest.TempPathFactory,
    mutations: list[tuple[str, str, Any]],
    length_delta: int,
    tail: bytes,
    cut: int,
) -> None:
    folder = tmp_path_factory.mktemp("st-fuzz")
    header = valid_header()
    for name, field, value in mutations:
        entry = header.setdefault(name, {})
        if field == "whole" or not isinstance(entry, dict):
            header[name] = value
        else:
            entry[field] = value
    raw = json.dumps(header).encode()
    body = bytes(range(28)) + tail
    data = struct.pack("<Q", max(0, len(raw) + length_delta) % 2**64) + raw + body
    path = folder / "consolidated.safetensors"
    path.write_bytes(data[: len(data) - cut] if cut < 20 else data)
    before = sorted(p.name for p in folder.iterdir())
    try:
        records = index_safetensors(path)
    except M7bError as exc:
        assert isinstance(exc, MismatchError), f"{type(exc).__name__}: {exc}"
        assert str(exc) and exc.exit_code == 5
    else:
        size = path.stat().st_size
        spans = sorted((r.offset, r.offset + r.nbytes) for r in records.values() if r.nbytes)
        assert all(0 < start <= end <= size for start, end in spans)
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))  # no gap, no overlap
        assert not spans or spans[-1][1] == size  # nothing past (or after) the last tensor
    assert sorted(p.name for p in folder.iterdir()) == before
