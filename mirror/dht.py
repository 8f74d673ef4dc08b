"""The DHT side of a session: its saved state, and announces retried until the DHT answers.

libtorrent announces a torrent to the DHT when it is added, which for a session just started is before the DHT
knows a single node, and then not again for `dht_announce_interval` (15 minutes): a bare magnet fetched right
after start-up would wait that long, and a fresh seed would not be found. `DhtAnnouncer` announces again every
`FAST` seconds until the DHT's bootstrap completes, then at growing intervals until a DHT reply brings peers of
the torrent (or `SETTLED` seconds pass), then leaves it to libtorrent's normal interval.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import libtorrent as lt

from m7b.atomic import write_bytes
from m7b.store import Store

from .session import dht_state

FAST = 2.0  # seconds between announces while the DHT has not bootstrapped
SETTLED = 120.0  # after bootstrap, the growing intervals stop once this long has passed without a reply


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
    with contextlib.suppress(OSError, ValueError):
        store.ensure_dir(store.dht_state_path.parent)
        write_bytes(store.dht_state_path, state)


@dataclass
class DhtAnnouncer:
    """Re-announce the torrents of one session to the DHT until the DHT answers (see the module's docstring)."""

    enabled: bool
    handles: list[lt.torrent_handle] = field(default_factory=list)
    bootstrapped_at: float | None = None
    answered: set[str] = field(default_factory=set)  # info-hashes a DHT reply brought peers for
    _next: float = 0.0
    _step: float = FAST
    count: int = 0  # announces this object asked for

    def watch(self, handle: lt.torrent_handle) -> None:
        self.handles.append(handle)

    def on_alert(self, alert: lt.alert, now: float) -> None:
        if isinstance(alert, lt.dht_bootstrap_alert) and self.bootstrapped_at is None:
            self.bootstrapped_at = now
            self._next, self._step = now, FAST  # the first announce that can reach anyone: now
        elif isinstance(alert, lt.dht_reply_alert) and alert.num_peers > 0:
            self.answered.add(str(alert.handle.info_hashes().get_best()))

    def tick(self, now: float) -> None:
        """Announce the torrents that still wait for the DHT, when their turn has come."""
        if not self.enabled or now < self._next:
            return
        if self.bootstrapped_at is not None and now - self.bootstrapped_at > SETTLED:
            return
        for handle in self.handles:
            if handle.is_valid() and str(handle.info_hashes().get_best()) not in self.answered:
                handle.force_dht_announce()
                self.count += 1
        if self.bootstrapped_at is not None:
            self._step = min(self._step * 2, 30.0)
        self._next = now + self._step
