"""Magnet links (BEP 9, BEP 53 btmh, BEP 19 ws=): parsed strictly, with errors that say what is wrong."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from m7b.errors import InvalidInputError

_HEX40 = re.compile(r"^[0-9a-fA-F]{40}$")
_B32 = re.compile(r"^[A-Za-z2-7]{32}$")
_BTMH = re.compile(r"^1220([0-9a-fA-F]{64})$")


@dataclass(frozen=True)
class Magnet:
    uri: str
    info_hash_v1: str | None
    info_hash_v2: str | None
    name: str | None
    trackers: tuple[str, ...]
    web_seeds: tuple[str, ...]
    peers: tuple[str, ...]

    @property
    def info_hash(self) -> str:
        return self.info_hash_v1 or self.info_hash_v2 or ""


def is_magnet(text: str) -> bool:
    return text.lower().startswith("magnet:")


def parse_magnet(uri: str) -> Magnet:
    """Parse a magnet link; a malformed one raises InvalidInputError naming the part that is wrong."""
    parts = urlsplit(uri.strip())
    if parts.scheme.lower() != "magnet" or not parts.query:
        raise InvalidInputError(f"{uri!r} is not a magnet link: expected magnet:?xt=urn:btih:<40 hex digits>&…")
    v1 = v2 = None
    name = None
    trackers: list[str] = []
    seeds: list[str] = []
    peers: list[str] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        key = key.lower()
        if key == "xt" or key.startswith("xt."):
            lower = value.lower()
            if lower.startswith("urn:btih:"):
                digest = value[9:]
                if _HEX40.match(digest):
                    v1 = digest.lower()
                elif _B32.match(digest):
                    v1 = binascii.hexlify(base64.b32decode(digest.upper())).decode()
                else:
                    raise InvalidInputError(
                        f"magnet info-hash {digest!r}: expected 40 hex digits or 32 base32 "
                        "characters (a BitTorrent v1 info-hash)"
                    )
            elif lower.startswith("urn:btmh:"):
                match = _BTMH.match(value[9:])
                if not match:
                    raise InvalidInputError(f"magnet v2 hash {value[9:]!r}: expected '1220' and 64 hex digits")
                v2 = match.group(1).lower()
        elif key == "dn":
            name = value
        elif key == "tr" or key.startswith("tr."):
            trackers.append(value)
        elif key == "ws":
            seeds.append(value)
        elif key == "x.pe":
            peers.append(value)
    if v1 is None and v2 is None:
        raise InvalidInputError(
            f"magnet link {uri!r} has no BitTorrent info-hash: expected xt=urn:btih:… or xt=urn:btmh:…"
        )
    return Magnet(
        uri=uri.strip(),
        info_hash_v1=v1,
        info_hash_v2=v2,
        name=name,
        trackers=tuple(trackers),
        web_seeds=tuple(seeds),
        peers=tuple(peers),
    )


def parse_peer(text: str) -> tuple[str, int]:
    """HOST:PORT or [IPv6]:PORT."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInputError(f"peer {text!r}: expected HOST:PORT, e.g. 127.0.0.1:6881")
    return host, int(port)
