"""The DHT state m7b keeps between runs (`M7B_HOME/dht/state`): the next session starts from the nodes it holds,
and whatever bytes that file holds (damaged, truncated, another program's) a session still starts, bootstrapping
as a first run does."""

from __future__ import annotations

from dataclasses import replace

import libtorrent as lt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from swarm import free_port, private_dht, wait_for

from m7b.mirror.dht import load_dht_state, routing_table_size, save_dht_state, state_nodes
from m7b.mirror.session import SessionOptions, dht_state, make_session
from m7b.store import Store


def _joined(session: lt.session) -> bool:
    """Whether the session's routing table holds a node, asking the DHT for peers meanwhile (as a torrent would:
    libtorrent fills its table from the answers to lookups)."""

    def known() -> bool:
        session.dht_get_peers(lt.sha1_hash(b"m7b-dht-state-test!!"))
        return routing_table_size(session) > 0

    return wait_for(known, 15, 0.5)


def _options(host: str, bootstrap: str, state: bytes | None = None) -> SessionOptions:
    return SessionOptions(
        listen=f"{host}:0", lsd=False, port_mapping=False, dht_bootstrap=(bootstrap,), dht_state=state
    )


@pytest.mark.slow
def test_the_next_session_starts_from_the_saved_nodes(tmp_path) -> None:
    """A session whose only bootstrap node is dead still joins the DHT through the nodes the last run saved; the
    same session without the saved state knows no node."""
    store = Store(tmp_path / "home")
    dead = f"127.0.0.31:{free_port()}"
    with private_dht() as dht:
        first = make_session(_options("127.0.0.30", dht.bootstrap))
        assert _joined(first), "the first session never joined the DHT"
        save_dht_state(store, first)
        first.pause()
        saved = load_dht_state(store)
        assert saved is not None and state_nodes(saved) > 0
        blank = make_session(_options("127.0.0.32", dead))
        again = make_session(_options("127.0.0.33", dead, saved))
        assert _joined(again), "the saved nodes were not reloaded"
        blank.dht_get_peers(lt.sha1_hash(b"m7b-dht-state-test!!"))
        assert not wait_for(lambda: routing_table_size(blank) > 0, 2, 0.5)
        for session in (blank, again):
            session.pause()


def test_a_missing_or_unreadable_state_is_no_state(tmp_path) -> None:
    store = Store(tmp_path / "home")
    assert load_dht_state(store) is None
    store.dht_state_path.mkdir(parents=True)  # a folder where the file should be
    assert load_dht_state(store) is None


_bencoded = st.recursive(
    st.integers(-(2**63), 2**63 - 1) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.binary(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def _state_like(value: object) -> bytes:
    """A bencoded dict shaped like libtorrent's saved session params, with `value` where the DHT state goes."""
    return bytes(lt.bencode({b"dht state": value}))


_state_bytes = (
    st.binary(max_size=200)
    | _bencoded.map(lambda v: bytes(lt.bencode(v)))
    | _bencoded.map(_state_like)
    | st.dictionaries(st.sampled_from([b"nodes", b"nodes6", b"node-id"]), _bencoded, max_size=3).map(_state_like)
    | st.integers(1, 5000).map(lambda depth: b"l" * depth + b"e" * depth)
)


@given(_state_bytes)
def test_state_nodes_counts_any_bytes_without_raising(state: bytes) -> None:
    assert state_nodes(state) >= 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_state_bytes)
def test_a_session_starts_from_any_state_bytes(state: bytes) -> None:
    """Damaged or hostile bytes in the state file never stop a session: it starts with the DHT on."""
    session = make_session(_options("127.0.0.34", f"127.0.0.35:{free_port()}", state))
    try:
        assert wait_for(session.is_dht_running, 5)
    finally:
        session.pause()


@pytest.mark.slow
def test_a_truncated_real_state_starts_a_session(tmp_path) -> None:
    """Every prefix of a state libtorrent wrote (a write cut short by a crash or a full disk) still starts one."""
    with private_dht(count=3) as dht:
        node = make_session(_options("127.0.0.36", dht.bootstrap))
        assert _joined(node)
        state = dht_state(node)
        node.pause()
    assert state is not None and state_nodes(state) > 0
    options = _options("127.0.0.37", f"127.0.0.38:{free_port()}")
    for cut in sorted({0, 1, len(state) // 3, len(state) // 2, len(state) - 1}):
        session = make_session(replace(options, dht_state=state[:cut]))
        assert wait_for(session.is_dht_running, 5), cut
        session.pause()
