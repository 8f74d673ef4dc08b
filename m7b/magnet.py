"""Magnet links (BEP 9, BEP 53 btmh, BEP 19 ws=): the one parser, strict, with errors that say what is wrong.

Mirror fetches by a magnet, verify binds a release to the hashes its manifest's magnet names, and the manifest
loader checks a manifest's magnet against its info-hash: all read magnets here.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlsplit

from m7b.address import parse_host_port
from m7b.errors import InvalidInputError

_HEX40 = re.compile(r"[0-9a-fA-F]{40}")
_B32 = re.compile(r"[A-Za-z2-7]{32}")
_BTMH = re.compile(r"1220([0-9a-fA-F]{64})")
_EXAMPLE = "magnet:?xt=urn:btih:<40 hex digits>&…"


def preferred_hash(info_hash_v1: str | None, info_hash_v2: str | None) -> str:
    """The hash that names a torrent in the store and in messages: v1 when present (as magnets use), else v2."""
    return info_hash_v1 or info_hash_v2 or ""


class InfoHashes:
    """The two info-hashes a torrent may have (BitTorrent v1 SHA-1, v2 SHA-256) and the rules over them; mixed into
    every record that carries `info_hash_v1` and `info_hash_v2` (a magnet, torrent metadata, a manifest's facts)."""

    info_hash_v1: str | None
    info_hash_v2: str | None

    @property
    def info_hash(self) -> str:
        """The hash that names the torrent in the store: v1 when present, else v2; "" when neither is known."""
        return preferred_hash(self.info_hash_v1, self.info_hash_v2)

    @property
    def hashes(self) -> tuple[str, ...]:
        """Every info-hash known, v1 first."""
        return tuple(h for h in (self.info_hash_v1, self.info_hash_v2) if h)


@dataclass(frozen=True)
class Magnet(InfoHashes):
    uri: str  # canonical: lower-case scheme and keys, hex hashes (what libtorrent accepts)
    info_hash_v1: str | None
    info_hash_v2: str | None
    name: str | None
    trackers: tuple[str, ...]
    web_seeds: tuple[str, ...]
    peers: tuple[str, ...]


def is_magnet(text: str) -> bool:
    return text.strip().lower().startswith("magnet:")


def _nonzero(digest: str, what: str) -> str:
    if not digest.strip("0"):
        raise InvalidInputError(f"magnet {what} is all zeros: no torrent has it; check the link")
    return digest


def _btih(digest: str) -> str:
    if any(ch.isspace() for ch in digest):
        raise InvalidInputError(
            f"magnet info-hash {digest!r} contains whitespace: expected 40 hex digits or 32 base32 characters "
            "with nothing between them; copy the link again"
        )
    if _HEX40.fullmatch(digest):
        return _nonzero(digest.lower(), "info-hash")
    if _B32.fullmatch(digest):
        return _nonzero(base64.b32decode(digest.upper()).hex(), "info-hash")
    raise InvalidInputError(
        f"magnet info-hash {digest!r}: expected 40 hex digits or 32 base32 characters (a BitTorrent v1 info-hash)"
    )


def _btmh(digest: str) -> str:
    match = _BTMH.fullmatch(digest)
    if not match:
        raise InvalidInputError(f"magnet v2 hash {digest!r}: expected '1220' and 64 hex digits")
    return _nonzero(match.group(1).lower(), "v2 hash")


def _one_hash(seen: str | None, found: str, what: str) -> str:
    """A magnet names one torrent: the same hash twice is fine, two different ones are refused."""
    if seen is not None and seen != found:
        raise InvalidInputError(
            f"magnet link has two different {what}s, {seen} and {found}: a magnet names one torrent; keep the one "
            "you mean"
        )
    return found


def parse_magnet(uri: str) -> Magnet:
    """Parse a magnet link; a malformed one raises InvalidInputError naming the part that is wrong."""
    if not isinstance(uri, str):
        raise InvalidInputError(f"{uri!r} is not a magnet link: expected text like {_EXAMPLE}")
    parts = urlsplit(uri.strip())
    if parts.scheme.lower() != "magnet" or not parts.query:
        raise InvalidInputError(f"{uri!r} is not a magnet link: expected {_EXAMPLE}")
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
                v1 = _one_hash(v1, _btih(value[9:]), "info-hash (xt=urn:btih:)")
            elif lower.startswith("urn:btmh:"):
                v2 = _one_hash(v2, _btmh(value[9:]), "v2 hash (xt=urn:btmh:)")
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
    query = [f"xt=urn:btih:{v1}"] if v1 else []
    query += [f"xt=urn:btmh:1220{v2}"] if v2 else []
    query += [f"dn={quote(name, safe='')}"] if name is not None else []
    query += [f"{key}={quote(v, safe='')}" for key, values in (("tr", trackers), ("ws", seeds)) for v in values]
    query += [f"x.pe={quote(p, safe=':[]')}" for p in peers]
    return Magnet(
        uri="magnet:?" + "&".join(query),
        info_hash_v1=v1,
        info_hash_v2=v2,
        name=name,
        trackers=tuple(trackers),
        web_seeds=tuple(seeds),
        peers=tuple(peers),
    )


def parse_peer(text: str) -> tuple[str, int]:
    """HOST:PORT or [IPv6]:PORT (a magnet's x.pe, or a peer the user names)."""
    return parse_host_port(text, "peer", "127.0.0.1:6881")
