"""One size parser for rates, piece sizes and shard sizes: binary K/M/G, decimal KB/MB/GB, errors carry data."""

from __future__ import annotations

import pytest

from m7b.cli_verify import _shard_size
from m7b.mirror.create import parse_piece_size
from m7b.sizes import SizeError, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", 0), (None, 0), ("4096", 4096), ("500K", 500 << 10), ("1.5m", 3 << 19), ("2G", 2 << 30), ("5GB", 5 * 10**9)],
)
def test_sizes(text: str | None, expected: int) -> None:
    assert parse_size(text, "limit") == expected


@pytest.mark.parametrize("text", ["abc", "12Q", "-5", "1e400G", "nan", "M"])
def test_a_size_that_does_not_parse_names_what_and_text(text: str) -> None:
    with pytest.raises(SizeError) as caught:
        parse_size(text, "upload limit", "bytes per second")
    err = caught.value
    assert (err.what, err.text, err.expected, err.exit_code) == ("upload limit", text, "bytes per second", 4)
    assert str(err) == f"upload limit {text!r}: expected bytes per second"


def test_each_caller_keeps_its_rule() -> None:
    assert parse_piece_size("64K") == 1 << 16 and parse_piece_size("0") == 0
    with pytest.raises(SizeError, match="power of two"):
        parse_piece_size("3000")
    assert _shard_size("5GB") == 5 * 10**9  # what huggingface_hub made of the same text
    with pytest.raises(SizeError, match="--max-shard-size"):
        _shard_size("lots")  # was a ValueError from huggingface_hub (exit 1)
    with pytest.raises(SizeError, match="at least 1"):
        _shard_size("0")
