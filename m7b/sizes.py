"""The one parser of a byte count a person types (a rate limit, a piece size, a shard size), and the one formatter
of a byte count m7b shows (binary IEC units everywhere: KiB, MiB, GiB, and MiB/s for rates).

`500K`, `20M`, `1G`, `64KiB` are binary (K = 1024), as for rates and piece sizes; `500MB`, `5GB` are decimal
(MB = 10**6), as Hugging Face shard sizes are; plain digits are bytes. A fraction is allowed (`1.5M`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from m7b.errors import InvalidInputError

_UNITS = {
    "": 1,
    "k": 1 << 10,
    "m": 1 << 20,
    "g": 1 << 30,
    "t": 1 << 40,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
}
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)", re.IGNORECASE)


@dataclass(eq=False)
class SizeError(InvalidInputError):
    """A size that does not parse or is out of range; the caller names `what` (a CLI words it as its flag)."""

    what: str
    text: str
    expected: str

    def __post_init__(self) -> None:
        super().__init__(f"{self.what} {self.text!r}: expected {self.expected}")


def parse_size(
    text: str | int | None, what: str, expected: str = "a size in bytes, e.g. 500K, 20M or 5GB", *, minimum: int = 0
) -> int:
    """Bytes from `text`; None or "" is 0 (the caller's "no limit" / "choose for me"). `expected` words the error."""
    if text is None or text == "":
        return 0
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _SIZE.fullmatch(str(text).strip())
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise SizeError(what, str(text), expected)
        number = float(match.group(1))
        if not math.isfinite(number * _UNITS[unit]):
            raise SizeError(what, str(text), expected)
        value = int(number * _UNITS[unit])
    if value < minimum or value >= 1 << 63:
        raise SizeError(what, str(text), f"at least {minimum:,} bytes and below 2**63, found {value:,}")
    return value


_IEC = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_bytes(n: float) -> str:
    """A byte count for people, in binary units: `512 B`, `1.5 KiB`, `8.4 MiB`, `13.5 GiB` (one decimal)."""
    if n < 1024:
        return f"{n:,.0f} B"
    value = float(n)
    for unit in _IEC:
        value /= 1024
        if round(value, 1) < 1024 or unit == _IEC[-1]:
            return f"{value:,.1f} {unit}"
    raise AssertionError("unreachable")


def format_rate(bytes_per_second: float) -> str:
    """A transfer rate for people, in the same units: `1.2 MiB/s`."""
    return f"{format_bytes(bytes_per_second)}/s"
