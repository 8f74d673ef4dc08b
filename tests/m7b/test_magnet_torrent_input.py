"""Bad magnets and .torrent files end in a clear error (exit 4 or 6), never an internal error, and write nothing."""

from __future__ import annotations

import base64
from pathlib import Path

import libtorrent as lt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m7b.errors import InvalidInputError, M7bError
from m7b.magnet import parse_magnet
from m7b.torrent import parse_torrent

HASH = "208b101a0f51514ecf285885a8b0f6fb1a1e4d7d"
LOOPBACK = ("--loopback", "--listen", "127.0.0.1:0")
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
INFO = {b"name": b"tiny", b"piece length": 16384, b"pieces": b"\x01" * 20, b"length": 5}


@pytest.mark.parametrize(
    "xt",
    ["urn:btih:" + "0" * 40, "urn:btih:" + "A" * 32, "urn:btmh:1220" + "0" * 64],
    ids=["hex", "base32", "v2"],
)
def test_an_all_zero_info_hash_is_refused(xt: str) -> None:
    with pytest.raises(InvalidInputError, match="all zeros") as caught:
        parse_magnet(f"magnet:?xt={xt}")
    assert caught.value.exit_code == 4


OTHER = "1" * 40
V2 = "ab" * 32


@pytest.mark.parametrize(
    "query",
    [f"xt=urn:btih:{HASH}&xt=urn:btih:{OTHER}", f"xt=urn:btmh:1220{V2}&xt.2=urn:btmh:1220{'cd' * 32}"],
    ids=["two-btih", "two-btmh"],
)
def test_a_magnet_with_two_different_hashes_of_one_kind_is_refused(query: str) -> None:
    with pytest.raises(InvalidInputError, match="two different") as caught:
        parse_magnet(f"magnet:?{query}")
    assert caught.value.exit_code == 4


def test_the_same_hash_twice_in_a_magnet_is_one_hash() -> None:
    b32 = base64.b32encode(bytes.fromhex(HASH)).decode()
    m = parse_magnet(f"magnet:?xt=urn:btih:{HASH}&xt.1=urn:btih:{b32}&xt=urn:btmh:1220{V2}&xt=urn:btmh:1220{V2}")
    assert (m.info_hash_v1, m.info_hash_v2) == (HASH, V2)


def test_an_upper_case_magnet_is_accepted_and_libtorrent_reads_what_m7b_passes_on() -> None:
    m = parse_magnet(f"MAGNET:?XT=URN:BTIH:{HASH.upper()}&DN=Tiny&TR=udp%3A%2F%2Ft.example%3A1%2Fa")
    assert (m.info_hash_v1, m.name, m.trackers) == (HASH, "Tiny", ("udp://t.example:1/a",))
    params = lt.parse_magnet_uri(m.uri)
    assert (str(params.info_hashes.v1), params.name, list(params.trackers)) == (HASH, "Tiny", list(m.trackers))


@pytest.mark.parametrize(
    "digest",
    [f"{HASH[:20]}%20{HASH[20:]}", f"{HASH}%0A", base64.b32encode(bytes.fromhex(HASH)).decode() + "%0A", "+" + HASH],
    ids=["space", "hex-newline", "base32-newline", "plus"],
)
def test_whitespace_inside_the_hash_is_refused_clearly(digest: str) -> None:
    with pytest.raises(InvalidInputError, match="whitespace") as caught:
        parse_magnet(f"magnet:?xt=urn:btih:{digest}")
    assert caught.value.exit_code == 4


def test_fetch_refuses_a_magnet_with_whitespace_in_its_hash(cli, m7b_home) -> None:
    result = cli("fetch", f"magnet:?xt=urn:btih:{HASH[:20]}%20{HASH[20:]}", *LOOPBACK, "--timeout", "1")
    assert result.code == 4, result.stderr
    assert "whitespace" in result.stderr and "Traceback" not in result.stderr
    assert not m7b_home.exists() or not any(m7b_home.rglob("*"))


HOSTILE_FIELDS = {
    "announce-int": {b"announce": 7},
    "announce-list": {b"announce": [b"http://t/"]},
    "announce-not-utf8": {b"announce": b"http://\xff\xfe/announce"},
    "announce-list-flat": {b"announce-list": [b"http://t/"]},
    "announce-list-ints": {b"announce-list": [[1, 2]]},
    "announce-list-dict": {b"announce-list": {b"a": b"b"}},
    "url-list-int": {b"url-list": 3},
    "url-list-nested": {b"url-list": [[b"http://w/"]]},
    "url-list-not-utf8": {b"url-list": [b"http://\xc3(/"]},
}


@pytest.mark.parametrize("extra", list(HOSTILE_FIELDS.values()), ids=list(HOSTILE_FIELDS))
def test_a_torrent_with_hostile_tracker_or_web_seed_fields_is_invalid_input(extra: dict) -> None:
    with pytest.raises(InvalidInputError, match="evil.torrent") as caught:
        parse_torrent(lt.bencode({b"info": INFO, **extra}), "evil.torrent")
    assert caught.value.exit_code == 4


@pytest.mark.slow
def test_fetch_and_verify_refuse_a_torrent_with_a_non_utf8_announce(cli, m7b_home, tmp_path: Path) -> None:
    evil = tmp_path / "evil.torrent"
    evil.write_bytes(lt.bencode({b"info": INFO, b"announce": b"http://\xff/announce", b"url-list": 9}))
    result = cli("fetch", evil, "--dest", tmp_path / "dest", *LOOPBACK, "--timeout", "1")
    assert result.code == 4, result.stderr
    assert "announce is not UTF-8" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "dest").exists() and (not m7b_home.exists() or not any(m7b_home.rglob("*")))
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "tiny").write_bytes(b"hello")
    result = cli("verify", folder, "--torrent", evil)
    assert result.code == 4, result.stderr
    assert "announce is not UTF-8" in result.stdout + result.stderr


# --- properties: whatever the bytes, only M7bError escapes, with its documented exit code -----------------------

_KEYS = st.sampled_from(["xt", "XT", "dn", "tr", "ws", "x.pe", "xt.1", "tr.2", "so", ""])
_VALUES = st.one_of(
    st.text(max_size=80),
    st.builds(
        lambda p, s: p + s,
        st.sampled_from(["urn:btih:", "URN:BTIH:", "urn:btmh:", "urn:btmh:1220"]),
        st.text(alphabet="0123456789abcdefABCDEFxyz2-7 \n\t%+", max_size=70),
    ),
)


@FUZZ
@given(
    st.one_of(
        st.text(max_size=200),
        st.builds(
            lambda scheme, pairs: scheme + "&".join(f"{k}={v}" for k, v in pairs),
            st.sampled_from(["magnet:?", "MAGNET:?", "Magnet:?", "magnet:", "magnet://?"]),
            st.lists(st.tuples(_KEYS, _VALUES), max_size=6),
        ),
    )
)
def test_any_text_is_a_magnet_or_invalid_input(text: str) -> None:
    try:
        m = parse_magnet(text)
    except M7bError as exc:
        assert exc.exit_code == 4
        return
    assert m.info_hash and all(len(h) in (40, 64) and h.strip("0") for h in m.hashes)
    params = lt.parse_magnet_uri(m.uri)  # what fetch hands libtorrent must parse
    assert str(params.info_hashes.v1 if m.info_hash_v1 else params.info_hashes.v2) == m.info_hash


def _bencodable() -> st.SearchStrategy:
    leaves = st.one_of(st.integers(-(2**40), 2**40), st.binary(max_size=40))
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.binary(max_size=12), inner, max_size=4)
        ),
        max_leaves=12,
    )


_FIELDS = st.sampled_from(
    [b"announce", b"announce-list", b"url-list", b"piece layers", b"name", b"length", b"files", b"path", b"pieces"]
)


def _assert_clear(data: bytes) -> None:
    try:
        parse_torrent(data, "fuzz.torrent")
    except M7bError as exc:
        assert exc.exit_code in (4, 6), exc


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_are_a_torrent_or_a_clear_error(data: bytes) -> None:
    _assert_clear(data)


@pytest.mark.slow
@FUZZ
@given(
    st.dictionaries(_FIELDS, _bencodable(), max_size=4),
    st.dictionaries(_FIELDS, _bencodable(), max_size=3),
)
def test_any_bencoded_torrent_is_read_or_refused_clearly(top: dict, info_changes: dict) -> None:
    info = {**INFO, **info_changes}
    _assert_clear(lt.bencode({**top, b"info": info}))
