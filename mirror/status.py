"""A mirror operator's view of `m7b seed`: an HTML page, the same figures as JSON, and Prometheus metrics.

The seed loop publishes each poll's release statuses to a `StatusBoard`; the status server
(`status_server.StatusServer`: one asyncio loop in one daemon thread, bounded, bound only where asked) renders the
board's latest copy on every request, from `PAGES`:
    /              the HTML page (reloads itself every 10 s)
    /status.json   the same figures as JSON
    /metrics       Prometheus text format, from prometheus_client with its own registry
"""

from __future__ import annotations

import html
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from m7b.address import parse_host_port
from m7b.sizes import format_bytes

from .seed import ReleaseStatus

STATES = ("checking", "seeding", "refused")
TRACKER_STATES = ("not contacted", "working", "error")


def parse_status_address(text: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets) for the status server; port 0 picks a free one."""
    return parse_host_port(text, "status address", "127.0.0.1:9881 (port 0 picks a free one)", port_zero=True)


class StatusBoard:
    """The latest release statuses, copied under a lock: written by the seed loop, read by request threads."""

    def __init__(self, listen_port: int = 0) -> None:
        self._lock = threading.Lock()
        self._releases: list[dict[str, Any]] = []
        self._updated_at: float | None = None
        self.listen_port = listen_port
        self.started_at = time.time()

    def update(self, statuses: Sequence[ReleaseStatus]) -> None:
        copies = [asdict(s) for s in statuses]
        with self._lock:
            self._releases, self._updated_at = copies, time.time()

    def document(self) -> dict[str, Any]:
        """What /status.json serves."""
        with self._lock:
            releases, updated_at = json.loads(json.dumps(self._releases)), self._updated_at
        now = time.time()
        return {
            "listen_port": self.listen_port,
            "started_at": self.started_at,
            "uptime_seconds": round(now - self.started_at, 1),
            "updated_at": updated_at,
            "releases": releases,
        }


class MirrorCollector(Collector):
    """Prometheus metrics read from the board at scrape time."""

    def __init__(self, board: StatusBoard) -> None:
        self.board = board

    def collect(self) -> Iterable[Metric]:
        doc = self.board.document()
        releases = doc["releases"]

        def gauge(name: str, doc_: str, key: str) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc_, labels=["release"])
            for r in releases:
                if r[key] is not None:
                    family.add_metric([r["name"]], r[key])
            return family

        state = GaugeMetricFamily(
            "m7b_seed_release_state", "1 for the release's current state", labels=["release", "state"]
        )
        uploaded = CounterMetricFamily(
            "m7b_seed_uploaded_bytes", "Payload bytes uploaded since this seed started", labels=["release"]
        )
        tracker = GaugeMetricFamily(
            "m7b_seed_tracker_status", "1 for each tracker's current status", labels=["release", "tracker", "status"]
        )
        checked = GaugeMetricFamily(
            "m7b_seed_last_check_timestamp_seconds", "When the data were last hash-checked", labels=["release"]
        )
        passed = GaugeMetricFamily(
            "m7b_seed_check_passed", "1 if the last check passed, 0 if it failed", labels=["release"]
        )
        signed = GaugeMetricFamily(
            "m7b_seed_signed", "1 for the key whose OMS signature vouches for the release", labels=["release", "signer"]
        )
        for r in releases:
            for s in STATES:
                state.add_metric([r["name"], s], 1.0 if r["state"] == s else 0.0)
            uploaded.add_metric([r["name"]], r["uploaded"])
            for t in r["trackers"]:
                for s in TRACKER_STATES:
                    tracker.add_metric([r["name"], t["url"], s], 1.0 if t["status"] == s else 0.0)
            if r["last_check_at"] is not None:
                checked.add_metric([r["name"]], r["last_check_at"])
            if r["check_verdict"] != "pending":
                passed.add_metric([r["name"]], 1.0 if r["check_verdict"] == "passed" else 0.0)
            if r.get("signer"):
                signed.add_metric([r["name"], f"sha256:{r['signer']}"], 1.0)
        yield state
        yield uploaded
        yield gauge("m7b_seed_upload_rate_bytes_per_second", "Payload upload rate", "upload_rate")
        yield gauge("m7b_seed_peers", "Connected peers", "peers")
        yield gauge("m7b_seed_connected_seeds", "Connected peers that hold every piece", "seeds")
        yield gauge("m7b_seed_connected_leechers", "Connected peers still downloading", "leechers")
        yield gauge("m7b_seed_swarm_seeds", "Seeds in the swarm, as the trackers count them", "swarm_seeds")
        yield gauge("m7b_seed_swarm_leechers", "Leechers in the swarm, as the trackers count them", "swarm_leechers")
        yield gauge("m7b_seed_ratio", "All-time uploaded bytes / release size", "ratio")
        yield gauge("m7b_seed_release_size_bytes", "Release size", "size")
        yield tracker
        yield checked
        yield passed
        yield signed
        uptime = GaugeMetricFamily("m7b_seed_uptime_seconds", "Seconds since this seed started")
        uptime.add_metric([], doc["uptime_seconds"])
        yield uptime


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t)) if t else "—"


def _tracker_rows(release: dict[str, Any]) -> Iterator[str]:
    for t in release["trackers"]:
        detail = t["message"] if t["status"] != "working" else f"{t['peers']} peers in last reply"
        yield (
            f'<tr class="tracker {html.escape(t["status"]).replace(" ", "-")}"><td>{html.escape(t["url"])}</td>'
            f"<td>{html.escape(t['status'])}</td><td>{html.escape(detail)}</td></tr>"
        )


def render_html(doc: dict[str, Any]) -> str:
    """The status page: one row per release, then each release's trackers and its last check."""
    rows, details = [], []
    for r in doc["releases"]:
        name = html.escape(r["name"])
        swarm = "—" if r["swarm_seeds"] is None else f"{r['swarm_seeds']} / {r['swarm_leechers']}"
        rows.append(
            f'<tr id="release-{name}"><td>{name}</td><td class="state {r["state"]}">{r["state"]}</td>'
            f"<td>{r['peers']}</td><td>{r['seeds']} / {r['leechers']}</td><td>{swarm}</td>"
            f'<td class="uploaded">{r["uploaded"]:,} bytes ({format_bytes(r["uploaded"])})</td>'
            f"<td>{format_bytes(r['upload_rate'])}/s</td><td>{r['ratio']:.2f}</td><td>{format_bytes(r['size'])}</td></tr>"
        )
        reason = f"<p class='reason'>{html.escape(r['reason'])}</p>" if r["reason"] else ""
        details.append(
            f"<h2>{name}</h2><p>info-hash <code>{html.escape(r['info_hash'])}</code>; last check: "
            f"{html.escape(r['last_check'] or '—')}, {_when(r['last_check_at'])}, verdict "
            f"<b class='verdict'>{html.escape(r['check_verdict'])}</b>; signed by "
            f"<code class='signer'>{html.escape('sha256:' + r['signer'] if r.get('signer') else 'not checked')}</code>"
            f"</p>{reason}"
            "<table><tr><th>tracker</th><th>status</th><th>detail</th></tr>"
            + ("".join(_tracker_rows(r)) or "<tr><td colspan=3>no trackers (DHT and --peer only)</td></tr>")
            + "</table>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="10">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>m7b mirror status</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin: .5em 0 1em; display: block; overflow-x: auto; max-width: 100%; }}
th, td {{ border: 1px solid #ccc; padding: .25em .6em; text-align: left; }}
th {{ background: #f2f2f2; }}
.seeding, .working {{ color: #176b2c; }} .refused, .error, .reason {{ color: #a11; }} .checking {{ color: #8a5a00; }}
</style></head><body>
<h1>m7b mirror status</h1>
<p>BitTorrent port {doc["listen_port"]}; up {doc["uptime_seconds"]:,.0f} s; updated {_when(doc["updated_at"])}.
Also as <a href="/status.json">JSON</a> and <a href="/metrics">Prometheus metrics</a>.</p>
<table><tr><th>release</th><th>state</th><th>peers</th><th>seeds / leechers (connected)</th>
<th>swarm seeds / leechers (trackers)</th><th>uploaded</th><th>upload rate</th><th>ratio</th><th>size</th></tr>
{"".join(rows)}
</table>
{"".join(details)}
</body></html>
"""


def status_registry(board: StatusBoard) -> CollectorRegistry:
    """A Prometheus registry of its own (never the process-wide default) that reads `board` at scrape time."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(MirrorCollector(board))
    return registry


def _metrics_page(board: StatusBoard, registry: CollectorRegistry) -> tuple[bytes, str]:
    return generate_latest(registry), CONTENT_TYPE_LATEST


def _json_page(board: StatusBoard, registry: CollectorRegistry) -> tuple[bytes, str]:
    return json.dumps(board.document(), indent=1).encode(), "application/json"


def _html_page(board: StatusBoard, registry: CollectorRegistry) -> tuple[bytes, str]:
    return render_html(board.document()).encode(), "text/html; charset=utf-8"


# path -> (board, registry) -> (body, content type): what the status server serves (mirror/status_server.py)
PAGES: dict[str, Callable[[StatusBoard, CollectorRegistry], tuple[bytes, str]]] = {
    "/": _html_page,
    "/index.html": _html_page,
    "/status.json": _json_page,
    "/metrics": _metrics_page,
}
