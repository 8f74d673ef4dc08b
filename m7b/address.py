"""HOST:PORT as a user, a magnet (`x.pe`) or an option gives it: the one parser for peers, listen addresses and the
status server. Ports are ASCII digits only (`str.isdigit` also accepts "²" and "٣", which `int` then refuses or
reads as another number)."""

from __future__ import annotations

import re

from m7b.errors import InvalidInputError

_PORT = re.compile(r"[0-9]{1,5}")


def parse_host_port(text: str, what: str, example: str, *, port_zero: bool = False) -> tuple[str, int]:
    """(host, port) from HOST:PORT or [IPv6]:PORT; port 0 ("pick a free one") only where `port_zero`."""
    host, sep, port = text.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    lowest = 0 if port_zero else 1
    if not sep or not host or not _PORT.fullmatch(port) or not lowest <= int(port) <= 65535:
        raise InvalidInputError(f"{what} {text!r}: expected HOST:PORT, e.g. {example}", field=what)
    return host, int(port)


def ascii_int(text: str) -> int | None:
    """`text` as a non-negative integer when it is only ASCII digits (at most 18 of them), else None."""
    stripped = text.strip()
    return int(stripped) if re.fullmatch(r"[0-9]{1,18}", stripped) else None
