"""The one place libtorrent sessions are built: every setting m7b changes is here."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import libtorrent as lt

from m7b import __version__
from m7b.address import parse_host_port
from m7b.errors import NetworkError

# The mainline DHT's routers, as qBittorrent and Transmission bootstrap from them (libtorrent knows only its own).
MAINLINE_ROUTERS = (
    "router.bittorrent.com:6881",
    "router.utorrent.com:6881",
    "dht.transmissionbt.com:6881",
    "dht.libtorrent.org:25401",
)

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
    # DHT nodes to join through (HOST:PORT); none: the mainline routers
    dht_bootstrap: tuple[str, ...] = ()
    # the listen address was chosen by the user: a port taken by another program is an error, not the next port
    strict_listen: bool = False
    # DHT routing table and node id from an earlier run (`dht_state`), so a session starts knowing nodes
    dht_state: bytes | None = field(default=None, repr=False, compare=False)

    @classmethod
    def loopback(cls, **changes: Any) -> SessionOptions:
        """The loopback profile, for a swarm on one machine (127.0.0.x, a test's namespace): no DHT, LSD, port
        mapping or uTP (TCP is 10-25x faster there); several peers may share an address."""
        base = cls(listen="127.0.0.1:0", dht=False, lsd=False, port_mapping=False, utp=False, allow_same_ip=True)
        return replace(base, **changes)

    @property
    def private_dht(self) -> bool:
        """Every bootstrap node is on a private or loopback address: a DHT inside one network, whose nodes share
        a /24, so libtorrent's one-node-per-subnet rules (against poisoning on the internet) are lifted."""
        return bool(self.dht_bootstrap) and all(_is_private_host(node) for node in self.dht_bootstrap)


def _is_private_host(node: str) -> bool:
    host, _ = parse_host_port(node, "DHT bootstrap node", "router.bittorrent.com:6881")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name: on the internet, as far as m7b can tell without resolving it
    return address.is_private or address.is_loopback or address.is_link_local


def dht_bootstrap_nodes(nodes: Sequence[str]) -> tuple[str, ...]:
    """Validate DHT bootstrap nodes (HOST:PORT, IPv6 in brackets), in the order given, each once."""
    for node in nodes:
        parse_host_port(node, "DHT bootstrap node", "router.bittorrent.com:6881 or [2001:db8::1]:6881")
    return tuple(dict.fromkeys(n.strip() for n in nodes))


def session_options(
    listen: str | None = None,
    loopback: bool = False,
    *,
    dht: bool = True,
    dht_bootstrap: Sequence[str] = (),
    **changes: Any,
) -> SessionOptions:
    """The options `m7b fetch` and `m7b seed` run with: the `loopback` profile (no DHT, LSD, port mapping or uTP;
    trackers, web seeds and given peers only) listening on `listen` or any free port; else the defaults for a user
    on the internet, listening on `listen` when given, without the DHT when not `dht`, joining the DHT through
    `dht_bootstrap` when given. A `listen` given must be had as given (`strict_listen`). `changes` set the other
    fields (rate limits, connections)."""
    nodes = dht_bootstrap_nodes(dht_bootstrap)
    strict = listen is not None
    if loopback:
        return SessionOptions.loopback(listen=listen or "0.0.0.0:0", strict_listen=strict, **changes)
    base = replace(SessionOptions(), dht=dht, dht_bootstrap=nodes, strict_listen=strict)
    return replace(base, listen=listen, **changes) if listen else replace(base, **changes)


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
        # the port asked for, or an error: never the next free one without saying so
        "listen_system_port_fallback": not options.strict_listen,
        "max_retry_port_bind": 0 if options.strict_listen else 10,
        "dht_bootstrap_nodes": ",".join(options.dht_bootstrap or MAINLINE_ROUTERS),
        "dht_restrict_routing_ips": not options.private_dht,
        "dht_restrict_search_ips": not options.private_dht,
        "dht_ignore_dark_internet": not options.private_dht,
        # every tracker announced at once (each is its own tier): a dead one costs nothing while a live one answers
        "announce_to_all_trackers": True,
        "announce_to_all_tiers": True,
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


# libtorrent's "local" peer class (exempt from rate limits by default): loopback, private and link-local networks
_LOCAL_NETWORKS = ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16")
_LOCAL_NETWORKS_V6 = ("::1/128", "fc00::/7", "fe80::/10")


def _peer_classes(session: lt.session) -> lt.ip_filter:
    """Every peer in the global class, whose limits are the session's rate limits (so `--download-limit` holds for
    a LAN peer too); local peers also keep the local class (they take no unchoke slot)."""
    every, local = 1 << session.global_peer_class_id, 1 << session.local_peer_class_id
    classes = lt.ip_filter()
    classes.add_rule("0.0.0.0", "255.255.255.255", every)
    classes.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", every)
    for network in map(ipaddress.ip_network, (*_LOCAL_NETWORKS, *_LOCAL_NETWORKS_V6)):
        classes.add_rule(str(network[0]), str(network[-1]), every | local)
    return classes


def make_session(options: SessionOptions) -> lt.session:
    """A session with `options`; with `strict_listen`, only once every address asked for is listened on (else
    `ListenError`, the session closed)."""
    params = lt.session_params()
    if options.dht and options.dht_state:
        try:
            params = lt.read_session_params(options.dht_state, lt.save_state_flags_t.save_dht_state)
        except RuntimeError:
            params = lt.session_params()  # an unreadable state is no state: the routers bootstrap the DHT
    params.settings = settings(options)
    session = lt.session(params)
    session.set_peer_class_filter(_peer_classes(session))
    if options.strict_listen:
        _check_listening(session, options.listen)
    return session


class ListenError(NetworkError):
    """An address the user asked to listen on could not be had (another program holds the port)."""

    def __init__(self, address: str, reason: str) -> None:
        self.address, self.reason = address, reason
        super().__init__(
            f"could not listen on {address}: {reason}; another program may hold the port: choose another one (listen), "
            "or port 0 for any free one",
            field="listen",
            address=address,
        )


def _check_listening(session: lt.session, listen: str, wait: float = 5.0) -> None:
    """Wait for libtorrent's answer on each address with a fixed port; raise ListenError on the first failure."""
    ports = {parse_host_port(item, "listen address", "0.0.0.0:6881", port_zero=True) for item in listen.split(",")}
    waiting = {port for _, port in ports if port}
    deadline = time.monotonic() + wait
    failure: lt.listen_failed_alert | None = None
    while time.monotonic() < deadline:
        session.wait_for_alert(100 if waiting else 50)
        alerts = session.pop_alerts()
        for alert in alerts:
            if isinstance(alert, lt.listen_failed_alert) and alert.port in {p for _, p in ports}:
                failure = failure or alert
            elif isinstance(alert, lt.listen_succeeded_alert):
                waiting.discard(alert.port)
        # done at the first failure, or once every port answered and no other interface has more to say
        if failure is not None or (not waiting and not alerts):
            break
    if failure is not None:
        host = str(failure.address)
        shown = f"[{host}]:{failure.port}" if ":" in host else f"{host}:{failure.port}"
        session.pause()
        raise ListenError(shown, failure.error.message())


def dht_state(session: lt.session) -> bytes | None:
    """The session's DHT routing table and node id, to start the next session with (`SessionOptions.dht_state`);
    None when the session runs no DHT."""
    if not session.is_dht_running():
        return None
    return bytes(lt.write_session_params_buf(session.session_state(lt.save_state_flags_t.save_dht_state)))


def listen_port(session: lt.session) -> int:
    return session.listen_port()
