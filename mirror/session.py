"""The one place libtorrent sessions are built: every setting m7b changes is here."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import libtorrent as lt

from m7b import __version__
from m7b.address import parse_host_port

ALERT_MASK = (
    lt.alert_category.error
    | lt.alert_category.status
    | lt.alert_category.storage
    | lt.alert_category.file_progress
    | lt.alert_category.peer
    | lt.alert_category.tracker
)


@dataclass(frozen=True)
class SessionOptions:
    """What a user (or a test on loopback) may choose; the defaults suit a real user on the internet."""

    listen: str = "0.0.0.0:6881,[::]:6881"
    dht: bool = True
    lsd: bool = True
    port_mapping: bool = True  # UPnP and NAT-PMP
    utp: bool = True  # outgoing uTP; on loopback TCP is ~10-25x faster
    max_connections: int = 200
    upload_limit: int = 0  # bytes/s, 0 = unlimited
    download_limit: int = 0
    # Loopback swarms run many peers on one IP; libtorrent refuses a second connection per IP by default.
    allow_same_ip: bool = False
    # libtorrent exempts local-network peers from rate limits; a loopback swarm needs them applied.
    limit_local_peers: bool = False

    @classmethod
    def loopback(cls, **changes: Any) -> SessionOptions:
        """For a swarm on 127.0.0.1: no DHT/LSD/port mapping, TCP only, peers may share an IP."""
        base = cls(
            listen="127.0.0.1:0",
            dht=False,
            lsd=False,
            port_mapping=False,
            utp=False,
            allow_same_ip=True,
            limit_local_peers=True,
        )
        return replace(base, **changes)


def session_options(listen: str | None = None, loopback: bool = False, **changes: Any) -> SessionOptions:
    """The options `m7b fetch` and `m7b seed` run with: `loopback` (no DHT, LSD, port mapping or uTP; trackers,
    web seeds and given peers only) listening on `listen` or any free port; else the defaults for a user on the
    internet, listening on `listen` when given. `changes` set the other fields (rate limits, connections)."""
    if loopback:
        return SessionOptions.loopback(listen=listen or "0.0.0.0:0", **changes)
    if listen:
        return replace(SessionOptions(), listen=listen, **changes)
    return replace(SessionOptions(), **changes)


def listen_interfaces(text: str) -> str:
    """Validate HOST:PORT[,HOST:PORT…] (IPv6 in brackets); port 0 picks a free one."""
    for item in text.split(","):
        parse_host_port(item, "listen address", "0.0.0.0:6881 or [::]:6881", port_zero=True)
    return text


def settings(options: SessionOptions) -> lt.settings_pack:
    """The settings pack for `options`. Throughput settings are tuned for multi-GB releases."""
    return {
        "user_agent": f"m7b/{__version__} libtorrent/{lt.__version__}",
        "listen_interfaces": listen_interfaces(options.listen),
        "enable_dht": options.dht,
        "enable_lsd": options.lsd,
        "enable_upnp": options.port_mapping,
        "enable_natpmp": options.port_mapping,
        "enable_outgoing_utp": options.utp,
        "enable_incoming_utp": options.utp,
        "enable_outgoing_tcp": True,
        "enable_incoming_tcp": True,
        "allow_multiple_connections_per_ip": options.allow_same_ip,
        "connections_limit": options.max_connections,
        "upload_rate_limit": options.upload_limit,
        "download_rate_limit": options.download_limit,
        "alert_mask": int(ALERT_MASK),
        "alert_queue_size": 10000,
        # throughput: deep request queues, large socket buffers, several disk and hashing threads
        "max_out_request_queue": 1500,
        "max_allowed_in_request_queue": 2000,
        "request_queue_time": 3,
        "whole_pieces_threshold": 5,
        "send_buffer_watermark": 8 << 20,
        "send_buffer_low_watermark": 1 << 20,
        "send_buffer_watermark_factor": 150,
        "recv_socket_buffer_size": 4 << 20,
        "send_socket_buffer_size": 4 << 20,
        "max_queued_disk_bytes": 64 << 20,
        "aio_threads": 4,
        "hashing_threads": 2,
        "checking_mem_usage": 2048,
        "mixed_mode_algorithm": lt.bandwidth_mixed_algo_t.prefer_tcp,
    }


def make_session(options: SessionOptions) -> lt.session:
    session = lt.session(settings(options))
    if options.limit_local_peers:
        local = session.get_peer_class(session.local_peer_class_id)
        local["upload_limit"], local["download_limit"] = options.upload_limit, options.download_limit
        session.set_peer_class(session.local_peer_class_id, local)
    return session


def listen_port(session: lt.session) -> int:
    return session.listen_port()
