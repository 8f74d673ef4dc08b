"""Property-based fuzzing of the bounds issue 17 set: manifest nesting and field sizes, SHA256SUMS, path lengths,
piece sizes, store names from display names, sampling options, and reads of files whose size is not the expected
one. Whatever the input, only an InvalidInputError escapes (or the reader returns a value within its bound).
Budget: the `ci` profile (tests/conftest.py)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from m7b.errors import InvalidInputError
from m7b.manifests.loader import MAX_DEPTH, MAX_LABEL, MAX_TEXT, parse_manifest_text
from m7b.mirror.create import MAX_PIECE, MIN_PIECE, parse_piece_size
from m7b.paths import NAME_MAX, PATH_MAX, check_path_length, length_problem, path_problem
from m7b.release import SLUG_MAX, slug
from m7b.verify.digest import FileDigestLane, ReadItem, read_stream
from m7b.verify.sums import parse_sums

HEAD = 'schema = 1\nname = "fuzz"\ntitle = "t"\npublisher = "p"\nlicense = "MIT"\n[sources]\nrelease = "r"\n'
OPEN = {"array": ("[", "]"), "table": ("{a = ", "}")}


@given(
    depth=st.integers(0, 3000),
    kinds=st.lists(st.sampled_from(sorted(OPEN)), min_size=1, max_size=3),
    where=st.sampled_from(["x = ", "files = ", "architecture = "]),
)
@example(depth=1000, kinds=["array"], where="x = ")
@example(depth=100_000, kinds=["array"], where="x = ")
def test_any_nesting_is_a_manifest_or_invalid_input(depth: int, kinds: list[str], where: str) -> None:
    opening = "".join(OPEN[kinds[i % len(kinds)]][0] for i in range(depth))
    closing = "".join(OPEN[kinds[i % len(kinds)]][1] for i in reversed(range(depth)))
    text = HEAD.replace("[sources]", where + opening + "1" + closing + "\n[sources]", 1)
    try:
        parse_manifest_text(text, "fuzz.toml")
    except InvalidInputError as exc:
        if depth > MAX_DEPTH and where == "x = ":  # an unknown field is refused as such, else for its depth
            assert "nested" in str(exc) or "unknown field" in str(exc), str(exc)
    else:
        assert depth <= MAX_DEPTH


@given(field=st.sampled_from(["title", "publisher", "license", "name"]), size=st.integers(0, 3 * MAX_LABEL))
def test_label_lengths_are_capped(field: str, size: int) -> None:
    lines = [f'{field} = "{"z" * size}"' if line.startswith(f"{field} =") else line for line in HEAD.splitlines()]
    try:
        manifest = parse_manifest_text("\n".join(lines) + "\n", "fuzz.toml")
    except InvalidInputError as exc:
        assert size > MAX_LABEL or size == 0 or field == "name", str(exc)
    else:
        assert 0 < len(getattr(manifest, field)) <= MAX_LABEL


@given(size=st.integers(MAX_TEXT - 2, MAX_TEXT + 2))
def test_source_texts_are_capped(size: int) -> None:
    text = HEAD.replace('release = "r"', f'release = "{"s" * size}"')
    try:
        parse_manifest_text(text, "fuzz.toml")
    except InvalidInputError:
        assert size > MAX_TEXT


@given(data=st.binary(max_size=400) | st.text(max_size=300).map(str.encode))
def test_any_sha256sums_is_parsed_or_invalid_input(data: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("sums") / "SHA256SUMS"
    path.write_bytes(data)
    with contextlib.suppress(InvalidInputError):
        for name, digest in parse_sums(path).items():
            assert path_problem(name) is None and length_problem(name) is None and len(digest) == 64


@given(text=st.text(max_size=600) | st.text(alphabet="a/é", max_size=5000))
def test_the_length_rule_agrees_with_the_file_system(text: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    problem = length_problem(text)
    data = text.encode("utf-8", "surrogateescape")
    assert (problem is None) == (len(data) <= PATH_MAX and all(len(p) <= NAME_MAX for p in data.split(b"/")))
    if problem is not None:
        with pytest.raises(InvalidInputError):
            check_path_length(text, "fuzz")
    elif "\x00" not in text and text:
        try:
            os.stat(tmp_path_factory.getbasetemp() / text.lstrip("/")[: PATH_MAX - 200])
        except OSError as exc:
            assert exc.errno != 36 or len(str(tmp_path_factory.getbasetemp())) + len(data) > PATH_MAX


@given(text=st.text(max_size=20) | st.integers(0, 1 << 70).map(str) | st.sampled_from(["1T", "256M", "128M", "1E"]))
def test_any_piece_size_is_in_range_or_invalid_input(text: str) -> None:
    with contextlib.suppress(InvalidInputError):
        value = parse_piece_size(text)
        assert value == 0 or (MIN_PIECE <= value <= MAX_PIECE and value & (value - 1) == 0)


@given(st.text(max_size=2000))
def test_any_display_name_gives_a_store_name_that_fits(text: str) -> None:
    made = slug(text)
    assert 0 < len(made) <= SLUG_MAX and path_problem(made) is None and length_problem(made) is None


@given(disk=st.integers(0, 3000), expected=st.none() | st.integers(0, 3000))
def test_a_file_of_another_size_than_expected_is_never_read(
    disk: int, expected: int | None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("read") / "f"
    path.write_bytes(b"q" * disk)
    lane = FileDigestLane("sha256")
    found = read_stream([ReadItem("f", Path(path), expected_size=expected)], [lane], block_size=1024)
    differs = expected is not None and expected != disk
    assert found["f"].size == disk and found["f"].unread is differs and ("f" in lane.digests) is not differs
