"""The DHT side of a session: its saved state, and announces retried until the DHT answers.

libtorrent announces a torrent to the DHT when it is added, which for a session just started is before the DHT
knows a single node, and then not again for `dht_announce_interval` (15 minutes): a bare magnet fetched right
after start-up would wait that long, and a fresh seed would not be found. `DhtAnnouncer` announces again every
`FAST` seconds until the DHT's routing table holds a node and for `BRISK` seconds after, then every `SLOW` seconds,
until the torrent has a connected peer (or `SETTLED` seconds pass), then leaves it to libtorrent's interval.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import libtorrent as lt

from m7b.atomic import write_bytes
from m7b.errors import M7bError
from m7b.store import Store

from .session import dht_state

FAST = 2.0  # seconds between announces until the DHT has bootstrapped, and for `BRISK` seconds after
BRISK = 30.0
SLOW = 15.0  # then seconds between announces, until `SETTLED` seconds after the bootstrap
SETTLED = 300.0


def load_dht_state(store: Store) -> bytes | None:
    """The DHT state an earlier session saved in the store, or None."""
    try:
        return store.dht_state_path.read_bytes()
    except OSError:
        return None


def save_dht_state(store: Store, session: lt.session) -> None:
    """Keep the session's DHT routing table for the next run (quietly skipped when the store cannot take it: the
    next session bootstraps from the routers as a first one does)."""
    state = dht_state(session)
    if not state:
        return
    with contextlib.suppress(OSError, ValueError, M7bError):  # a link or a full disk: the next run bootstraps
        store.ensure_dir(store.dht_state_path.parent)
        write_bytes(store.dht_state_path, state)


def state_nodes(state: bytes | None) -> int:
    """How many nodes a saved DHT state (libtorrent's session params, as `dht_state` gives them) holds: 0 for bytes
    that are no such state (damaged, truncated, another file's)."""
    try:
        doc: Any = lt.bdecode(state) if state else None
    except RuntimeError:  # not bencoding, or nested past libtorrent's depth limit
        return 0
    table = doc.get(b"dht state") if isinstance(doc, dict) else None
    if not isinstance(table, dict):
        return 0
    return sum(len(nodes) for key in (b"nodes", b"nodes6") if isinstance(nodes := table.get(key), list))


def routing_table_size(session: lt.session) -> int:
    """How many nodes the session's DHT routing table holds (0 before the bootstrap answered)."""
    return state_nodes(dht_state(session))


@dataclass
class DhtAnnouncer:
    """Re-announce the torrents of one session to the DHT until the DHT answers (see the module's docstring): a
    torrent stops being re-announced once it has a connected peer (a DHT reply counts itself among the peers, so
    a reply alone proves nothing)."""

    session: lt.session
    enabled: bool
    handles: list[lt.torrent_handle] = field(default_factory=list)
    bootstrapped_at: float | None = None
    _next: float = 0.0
    count: int = 0  # announces this object asked for

    def watch(self, handle: lt.torrent_handle) -> None:
        self.handles.append(handle)

    def tick(self, now: float) -> None:
        """Announce the torrents that still wait for the DHT, when their turn has come."""
        if not self.enabled or now < self._next:
            return
        if self.bootstrapped_at is None and routing_table_size(self.session) > 0:
            self.bootstrapped_at = now  # the first announce that can reach anyone: now
        since = now - self.bootstrapped_at if self.bootstrapped_at is not None else 0.0
        if since > SETTLED:
            return
        for handle in self.handles:
            if handle.is_valid() and handle.status().num_peers == 0:
                handle.force_dht_announce()
                self.count += 1
        self._next = now + (FAST if since <= BRISK else SLOW)
