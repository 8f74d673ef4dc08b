"""Property-based fuzzing of the small readers of outside data: HOST:PORT (peers, listen and status addresses),
sizes and rates, the store's release records, a lock file's holder, and a web seed's HTTP status line. Whatever
the text or bytes, only an InvalidInputError escapes (or the reader returns a safe value), and nothing names a
path outside the store. Budget: the `ci` profile (tests/conftest.py)."""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from m7b.address import parse_host_port
from m7b.errors import InvalidInputError
from m7b.locks import _read_holder
from m7b.magnet import parse_peer
from m7b.mirror.session import listen_interfaces
from m7b.mirror.sources import _status_code
from m7b.mirror.status import parse_status_address
from m7b.sizes import parse_size
from m7b.store import Store

HOSTILE_DIGITS = ["²", "٣", "４", "1e3", "-1", " 80", "65536", "0x50", "99999999999999999999"]


@pytest.mark.parametrize("port", HOSTILE_DIGITS)
def test_a_port_that_is_not_ascii_digits_in_range_is_invalid_input(port: str) -> None:
    for parse in (parse_peer, parse_status_address, listen_interfaces):
        with pytest.raises(InvalidInputError):
            parse(f"127.0.0.1:{port}")


@given(st.text(max_size=40))
def test_any_text_is_an_address_or_invalid_input(text: str) -> None:
    for parse in (parse_peer, parse_status_address, listen_interfaces):
        try:
            result = parse(text)
        except InvalidInputError:
            continue
        if parse is not listen_interfaces:
            host, port = result
            assert host and 0 <= port <= 65535


@given(st.text(max_size=30))
def test_any_text_is_a_size_or_invalid_input(text: str) -> None:
    with contextlib.suppress(InvalidInputError):
        assert parse_size(text, "size") >= 0


@given(data=st.binary(max_size=300))
def test_any_lock_file_names_a_holder_without_failing(data: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("lock") / "x.lock"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        holder = _read_holder(fd, "release x", False)
    finally:
        os.close(fd)
    assert holder.pid is None or holder.pid >= 0
    assert isinstance(str(holder), str)


@given(st.text(max_size=20))
def test_any_http_status_line_is_a_code_or_none(text: str) -> None:
    code = _status_code(text)
    assert code is None or 100 <= code <= 999


RECORD_VALUES = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=70),
    st.lists(st.text(max_size=5), max_size=3),
    st.sampled_from(["../../etc/passwd", "/abs", "a" * 40, "ab" * 32, "x/../y", "", "."]),
)


@given(name=RECORD_VALUES, info_hash=RECORD_VALUES, raw=st.binary(max_size=60))
@example(name="mistral-7b", info_hash="ab" * 32, raw=b"{}")  # a good record beside garbage: it must be found
@example(name="../../etc/passwd", info_hash="a" * 40, raw=b"")
def test_release_records_yield_only_plain_names_and_hex_hashes(
    name: object, info_hash: object, raw: bytes, tmp_path_factory: pytest.TempPathFactory
) -> None:
    store = Store(tmp_path_factory.mktemp("home"))
    store.releases_dir.mkdir(parents=True)
    label = name if isinstance(name, str) and name and "/" not in name and "\x00" not in name else "r"
    (store.releases_dir / f".{label}.json").write_text(json.dumps({"name": name, "info_hash": info_hash}))
    (store.releases_dir / ".garbage.json").write_bytes(raw)
    found = store.recorded_releases()
    hex_hash = isinstance(info_hash, str) and re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", info_hash) is not None
    plain = isinstance(name, str) and re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,60}", name) is not None and name == label
    if plain and hex_hash:
        assert found == {name: info_hash}  # a well-formed record is always found, whatever garbage lies beside it
    assert all(n == name for n in found)  # the garbage record never yields a release
    for found_name, found_hash in found.items():
        assert store.release_dir(found_name).parent == store.releases_dir  # no name reaches outside the store
        assert store.torrent_path(found_hash).parent == store.torrents_dir
        assert found_hash == info_hash and hex_hash


def test_a_record_whose_hash_is_a_path_is_ignored(tmp_path: Path) -> None:
    store = Store(tmp_path / "home")
    store.releases_dir.mkdir(parents=True)
    (store.releases_dir / ".evil.json").write_text(json.dumps({"name": "evil", "info_hash": "../../../etc/passwd"}))
    (store.releases_dir / ".good.json").write_text(json.dumps({"name": "good", "info_hash": "ab" * 20}))
    assert store.recorded_releases() == {"good": "ab" * 20}


def test_the_address_rule_names_what_it_read() -> None:
    with pytest.raises(InvalidInputError, match="peer 'host:²'") as caught:
        parse_host_port("host:²", "peer", "127.0.0.1:6881")
    assert caught.value.data["field"] == "peer"
