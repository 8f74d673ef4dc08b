"""One size parser for rates, piece sizes and shard sizes: binary K/M/G, decimal KB/MB/GB, errors carry data."""

from __future__ import annotations

import pytest

from m7b.cli.verify import _shard_size
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


@pytest.mark.parametrize(
    ("count", "shown"),
    [
        (0, "0 B"),
        (1023, "1,023 B"),
        (1024, "1.0 KiB"),
        (3 << 19, "1.5 MiB"),
        ((1 << 20) - 1, "1.0 MiB"),  # rounds up into the next unit, never "1,024.0 KiB"
        (27 << 29, "13.5 GiB"),
    ],
)
def test_one_formatter_shows_binary_units(count: int, shown: str) -> None:
    from m7b.sizes import format_bytes, format_rate

    assert format_bytes(count) == shown
    assert format_rate(count) == f"{shown}/s"
    if count >= 1024:  # what it shows parses back (binary suffix) to within the shown precision
        number, unit = shown.replace(",", "").split()
        assert abs(parse_size(f"{number}{unit}", "size") - count) <= 0.05 * (1 << 10 * ("KMGT".index(unit[0]) + 1))
