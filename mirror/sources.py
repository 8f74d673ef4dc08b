"""What each source of one torrent is doing, from libtorrent's alerts: its trackers and its web seeds.

Fetch and seed both keep a `SourceWatch` per torrent and feed it every alert of that torrent; it is the one place
that turns tracker alerts and web-seed alerts (url_seed_alert, and peer errors, bans and disconnects whose
endpoint is a web seed's server) into `TrackerStatus` and `WebSeedStatus` records.

A web seed (BEP 19) fails in ways libtorrent reports in different alerts:
- an HTTP error status (404, 500, …): url_seed_alert with the status line;
- a server that ignores Range (answers 200 with the whole file to a range request): peer_error_alert
  "invalid HTTP range" from the server's endpoint; libtorrent cannot use such a server (it asks for at most
  `urlseed_max_request_bytes` per request and checks the reply's range), so the status says so;
- wrong bytes: hash failures, then libtorrent bans the server (url_seed_alert "peer banned").
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import libtorrent as lt

from m7b.address import ascii_int

NOT_CONTACTED, WORKING, ERROR = "not contacted", "working", "error"


@dataclass
class TrackerStatus:
    url: str
    status: str = NOT_CONTACTED  # not contacted / working / error
    message: str = ""  # the error, or the tracker's warning
    peers: int = 0  # peers in its last reply


@dataclass
class WebSeedStatus:
    url: str
    status: str = NOT_CONTACTED  # not contacted / working / error
    message: str = ""  # what went wrong, in words
    http_status: int | None = None  # the HTTP status of a failed request, when there was one
    no_range: bool = False  # the server answered a range request with the whole file
    banned: bool = False  # it sent data that failed the piece hashes
    downloaded: int = 0  # payload bytes from it over its current connection

    @property
    def failed_for_good(self) -> bool:
        """A failure libtorrent will not get past by retrying: no Range support, a 4xx status, or a ban."""
        return self.no_range or self.banned or (self.http_status is not None and 400 <= self.http_status < 500)


# each web seed message completes "web seed URL …"
NO_RANGE_MESSAGE = (
    "answers without Range support (HTTP 200 for a range request): m7b needs a server that honours Range "
    "requests, e.g. nginx"
)
BANNED_MESSAGE = "sent data that failed the piece hashes (banned)"


def _port(url: str) -> int | None:
    parts = urlsplit(url)
    try:
        return parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return None


def _status_code(text: str) -> int | None:
    head = text.strip().split(" ", 1)[0]
    return ascii_int(head) if len(head) == 3 else None


@dataclass
class SourceWatch:
    """The trackers and web seeds of one torrent handle, kept up to date from its alerts."""

    handle: lt.torrent_handle
    trackers: list[TrackerStatus] = field(default_factory=list)
    web_seeds: list[WebSeedStatus] = field(default_factory=list)
    _addresses: dict[str, set[tuple[str, int]]] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, handle: lt.torrent_handle) -> SourceWatch:
        return cls(
            handle,
            trackers=[TrackerStatus(t["url"]) for t in handle.trackers()],
            web_seeds=[WebSeedStatus(url) for url in handle.url_seeds()],
        )

    def on_alert(self, alert: lt.alert) -> None:
        """Fold one alert of this torrent into the sources' status (alerts of other torrents are ignored)."""
        if not isinstance(alert, lt.torrent_alert) or alert.handle != self.handle:
            return
        if isinstance(alert, lt.tracker_alert):
            self._tracker(alert)
        elif isinstance(alert, lt.url_seed_alert):
            self._url_seed(alert)
        elif isinstance(alert, (lt.peer_error_alert, lt.peer_disconnected_alert)):
            seed = self._web_seed_at(alert.endpoint)
            if seed is not None and alert.error.value() != 0:
                self._web_seed_error(seed, alert.error.message())
        elif isinstance(alert, lt.peer_ban_alert):
            seed = self._web_seed_at(alert.endpoint)
            if seed is not None:
                seed.status, seed.banned = ERROR, True
                seed.message = BANNED_MESSAGE

    def problems(self) -> list[str]:
        """Each failing source in words ("web seed URL answered HTTP 404 …", "tracker URL: …"), web seeds first."""
        seeds = [f"web seed {s.url} {s.message}" for s in self.web_seeds if s.status == ERROR]
        return seeds + [f"tracker {t.url}: {t.message}" for t in self.trackers if t.status == ERROR]

    def refresh(self) -> None:
        """Mark web seeds that are delivering data (their connections in libtorrent's peer list)."""
        if not self.web_seeds:
            return
        for seed in self.web_seeds:
            seed.downloaded = 0
        for peer in self.handle.get_peer_info():
            if peer.connection_type != lt.peer_info.web_seed:
                continue
            delivering = self._web_seed_at(peer.ip)
            if delivering is None:
                continue
            delivering.downloaded += peer.total_download
            if peer.total_download > 0 and not delivering.failed_for_good:
                delivering.status, delivering.message, delivering.http_status = WORKING, "", None

    def _tracker(self, alert: lt.tracker_alert) -> None:
        entry = next((t for t in self.trackers if t.url == alert.tracker_url()), None)
        if entry is None:
            entry = TrackerStatus(alert.tracker_url())
            self.trackers.append(entry)
        if isinstance(alert, lt.tracker_reply_alert):
            entry.status, entry.message, entry.peers = WORKING, "", alert.num_peers
        elif isinstance(alert, lt.tracker_error_alert):
            reason = alert.failure_reason()
            entry.status, entry.message = ERROR, alert.error.message() + (f" ({reason})" if reason else "")
        elif isinstance(alert, lt.tracker_warning_alert):
            # libtorrent 2.0's binding has warning_message(); 2.1's (and its stubs) only the alert's own message()
            warning = getattr(alert, "warning_message", None)
            entry.message = warning() if callable(warning) else alert.message()

    def _seed(self, url: str) -> WebSeedStatus:
        entry = next((s for s in self.web_seeds if s.url == url), None)
        if entry is None:
            entry = WebSeedStatus(url)
            self.web_seeds.append(entry)
        return entry

    def _url_seed(self, alert: lt.url_seed_alert) -> None:
        seed = self._seed(alert.server_url())
        text = alert.error_message()
        code = _status_code(text)
        if code is not None:
            seed.status, seed.http_status = ERROR, code
            seed.message = f"answered HTTP {text.strip()}"
        elif alert.error.value() != 0:
            if seed.banned or "banned" in alert.error.message():
                seed.status, seed.banned = ERROR, True
                seed.message = BANNED_MESSAGE
            else:
                self._web_seed_error(seed, alert.error.message())

    def _web_seed_error(self, seed: WebSeedStatus, message: str) -> None:
        if seed.failed_for_good:
            return  # keep the first clear reason (a ban, a 4xx, no Range) over the disconnects that follow it
        seed.status = ERROR
        if "invalid HTTP range" in message:
            seed.no_range, seed.message = True, NO_RANGE_MESSAGE
        else:
            seed.message = f"failed: {message}"

    def _web_seed_at(self, endpoint: tuple[str, int]) -> WebSeedStatus | None:
        """The web seed whose server is `endpoint` (ip, port), if any: libtorrent's peer alerts name only it."""
        ip, port = endpoint[0], endpoint[1]
        for seed in self.web_seeds:
            if _port(seed.url) == port and (ip, port) in self._resolve(seed.url, port):
                return seed
        return None

    def _resolve(self, url: str, port: int) -> set[tuple[str, int]]:
        """The addresses of a web seed's server (`port`: its URL's), looked up once (and only for an endpoint on it)."""
        if url not in self._addresses:
            parts = urlsplit(url)
            try:
                infos = socket.getaddrinfo(parts.hostname or "", port, type=socket.SOCK_STREAM)
                # SOCK_STREAM lookups give AF_INET/AF_INET6 addresses, whose host is a str (typeshed: str | int)
                self._addresses[url] = {(str(info[4][0]), port) for info in infos}
            except OSError:
                self._addresses[url] = set()
        return self._addresses[url]
