from __future__ import annotations

import base64

import pytest

from m7b.errors import InvalidInputError
from m7b.magnet import parse_magnet, parse_peer

HASH = "208b101a0f51514ecf285885a8b0f6fb1a1e4d7d"


def test_the_mistral_magnet() -> None:
    m = parse_magnet(
        f"magnet:?xt=urn:btih:{HASH}&dn=mistral-7B-v0.1&tr=udp%3A%2F%2Ftracker.opentrackr.org%3A1337%2Fannounce"
    )
    assert (m.info_hash_v1, m.name, m.trackers) == (
        HASH,
        "mistral-7B-v0.1",
        ("udp://tracker.opentrackr.org:1337/announce",),
    )


def test_base32_v2_web_seeds_and_peers() -> None:
    b32 = base64.b32encode(bytes.fromhex(HASH)).decode()
    m = parse_magnet(f"magnet:?xt=urn:btih:{b32}&xt=urn:btmh:1220{'ab' * 32}&ws=http%3A%2F%2Fm%2F&x.pe=1.2.3.4:5")
    assert m.info_hash_v1 == HASH and m.info_hash_v2 == "ab" * 32
    assert m.web_seeds == ("http://m/",) and m.peers == ("1.2.3.4:5",)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("http://example.com/x.torrent", "is not a magnet link"),
        ("magnet:?dn=nothing", "has no BitTorrent info-hash"),
        (f"magnet:?xt=urn:btih:{HASH[:-1]}", "expected 40 hex digits or 32 base32"),
        ("magnet:?xt=urn:btmh:1220abcd", "expected '1220' and 64 hex digits"),
    ],
)
def test_malformed_magnets(uri: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_magnet(uri)


def test_peers() -> None:
    assert parse_peer("127.0.0.1:6881") == ("127.0.0.1", 6881)
    assert parse_peer("[::1]:7000") == ("::1", 7000)
    with pytest.raises(InvalidInputError, match="expected HOST:PORT"):
        parse_peer("localhost")


def test_cli_refuses_a_malformed_magnet(cli, m7b_home) -> None:
    result = cli("fetch", f"magnet:?xt=urn:btih:{HASH[:10]}")
    assert result.code == 4 and "expected 40 hex digits" in result.stderr
    assert not m7b_home.exists() or not any(m7b_home.rglob("*"))
