"""A private DHT on one machine, for local swarms (tests, benchmarks): libtorrent nodes on their own loopback
addresses (127.0.0.2, .3, …) with m7b's settings for a private DHT, each knowing the others."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libtorrent as lt

from m7b.errors import NetworkError
from m7b.torrent import load_torrent

from .dht import routing_table_size
from .dht import state_nodes as dht_state_nodes
from .layout import renamed_files
from .session import SessionOptions, settings

__all__ = ["PrivateDht", "dht_state_nodes", "private_dht"]


def _wait_for(predicate: Any, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


@dataclass
class PrivateDht:
    """libtorrent DHT nodes on their own loopback addresses (127.0.0.2, .3, …), all joined through the first."""

    nodes: list[lt.session]
    bootstrap: str  # "127.0.0.2:PORT"

    def seed(self, index: int, torrent: Path, folder: Path, *, reaches_out: bool = True) -> lt.torrent_handle:
        """Node `index` seeds `folder`; returns once another node finds it through the DHT. Without `reaches_out`
        it connects to no one (as if every leecher were behind a NAT): a leecher must find it."""
        ti, meta = load_torrent(torrent)
        if not reaches_out:
            self.nodes[index].apply_settings({"enable_outgoing_tcp": False, "enable_outgoing_utp": False})
        atp = lt.add_torrent_params()
        atp.ti, atp.save_path, atp.renamed_files = ti, str(folder), renamed_files(meta)
        atp.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
        atp.flags |= lt.torrent_flags.upload_mode
        handle = self.nodes[index].add_torrent(atp)
        if not _wait_for(lambda: handle.status().is_seeding, 30):
            raise NetworkError(f"the DHT node seeding {folder} did not finish checking its files")
        if not self.finds(ti.info_hashes().v1, announce=handle):
            raise NetworkError(f"no node of the private DHT finds the seed of {folder}")
        return handle

    def wait_for_lookup(self, info_hash: str, timeout: float = 15, after: float = 0.0) -> float | None:
        """Wait until some node is asked for peers of `info_hash` (a client's DHT lookup has reached the DHT) at
        `after` (time.monotonic()) or later; the time it was asked, or None."""
        wanted = lt.sha1_hash(bytes.fromhex(info_hash))
        for node in self.nodes:
            node.apply_settings({"alert_mask": int(lt.alert_category.dht)})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes:
                for alert in node.pop_alerts():
                    now = time.monotonic()
                    if isinstance(alert, lt.dht_get_peers_alert) and alert.info_hash == wanted and now >= after:
                        return now
            time.sleep(0.05)
        return None

    def finds(self, info_hash: lt.sha1_hash, announce: lt.torrent_handle | None = None, timeout: float = 15) -> bool:
        """Whether the last node, asking the DHT, gets a peer for `info_hash` (re-announcing `announce` meanwhile)."""
        probe = self.nodes[-1]
        probe.apply_settings({"alert_mask": int(lt.alert_category.dht_operation)})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if announce is not None:
                announce.force_dht_announce()
            probe.dht_get_peers(info_hash)
            until = time.monotonic() + 1
            while time.monotonic() < until:
                probe.wait_for_alert(100)
                for alert in probe.pop_alerts():
                    if isinstance(alert, lt.dht_get_peers_reply_alert) and alert.num_peers() > 0:
                        return True
        return False


def _dht_node(host: str) -> lt.session:
    """A DHT node on `host` with m7b's settings for a private DHT (the subnet rules lifted), no bootstrap router."""
    options = SessionOptions(listen=f"{host}:0", lsd=False, port_mapping=False, dht_bootstrap=(f"{host}:1",))
    return lt.session({**settings(options), "dht_bootstrap_nodes": ""})


@contextlib.contextmanager
def private_dht(count: int = 8) -> Iterator[PrivateDht]:
    """`count` DHT nodes on 127.0.0.2 … 127.0.0.(count+1), joined through the first one; yields them once every
    node knows another."""
    nodes: list[lt.session] = []
    for i in range(2, count + 2):
        node = _dht_node(f"127.0.0.{i}")
        for j, other in enumerate(nodes):  # as ordinary nodes (a bootstrap router is never in a routing table)
            node.add_dht_node((f"127.0.0.{j + 2}", other.listen_port()))
        nodes.append(node)
    bootstrap = f"127.0.0.2:{nodes[0].listen_port()}"
    try:
        if not _wait_for(lambda: all(routing_table_size(n) > 0 for n in nodes), 15, 0.1):
            raise NetworkError("the private DHT did not form: a node knew no other within 15 s")
        yield PrivateDht(nodes, bootstrap)
    finally:
        for node in nodes:
            node.pause()
