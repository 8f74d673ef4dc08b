"""`m7b seed --status`: the operator's page, JSON and Prometheus metrics, read from a real seed over HTTP."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from swarm import free_port, local_opentracker, wait_for
from test_seed import LOOPBACK, running_seed, stop

from m7b.mirror.status import StatusBoard
from m7b.mirror.status_server import ServerLimits, StatusServer

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def get(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.headers["Content-Type"], response.read().decode()


def metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics by (name, sorted labels)."""
    kind, text = get(url + "metrics")
    assert kind.startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def seeded_and_fetched(cli, m7b_home: Path, pub, trackers: list[str]):
    """A seed with --status on 127.0.0.1:0 that has served the release once to a fresh leecher."""
    extra = [a for t in trackers for a in ("--tracker", t)]
    seed = running_seed(pub.folder, "--status", "127.0.0.1:0", *extra)
    proc, status = seed.__enter__()
    try:
        fetched = cli(
            "fetch",
            pub.magnet,
            "--peer",
            f"127.0.0.1:{status['listen_port']}",
            *LOOPBACK,
            env={"M7B_HOME": str(m7b_home / "leecher")},
        )
        assert fetched.code == 0, fetched.stderr
        url = status["status_url"]
        served = lambda: json.loads(get(url + "status.json")[1])["releases"][0]["uploaded"]  # noqa: E731
        assert wait_for(lambda: served() >= pub.meta.total_size)
    except BaseException:
        seed.__exit__(None, None, None)
        raise
    return seed, proc, url


@pytest.mark.slow
def test_status_json_and_metrics_report_what_the_seed_served(cli, m7b_home, publish, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/announce"  # nothing listens there
    pub = publish(trackers=[dead])
    with local_opentracker(tmp_path / "tracker", [pub.meta.info_hash]) as tracker:
        seed, proc, url = seeded_and_fetched(cli, m7b_home, pub, [tracker])
        try:
            assert url.startswith("http://127.0.0.1:")  # bound only where asked
            trackers = {}
            # the trackers answer on their own schedule: wait until each has been tried
            assert wait_for(
                lambda: (
                    trackers.update(
                        (t["url"], t) for t in json.loads(get(url + "status.json")[1])["releases"][0]["trackers"]
                    )
                    or all(t["status"] != "not contacted" for t in trackers.values())
                )
            ), trackers
            kind, text = get(url + "status.json")
            assert kind == "application/json"
            release = json.loads(text)["releases"][0]
            samples = metrics(url)
        finally:
            events = stop(proc)
            seed.__exit__(None, None, None)

    name = pub.folder.name.lower()  # a folder seeds under its own name
    assert (release["name"], release["state"], release["check_verdict"]) == (name, "seeding", "passed")
    assert release["last_check"] == "full recheck" and release["last_check_at"] > 0
    assert release["uploaded"] >= release["size"] == pub.meta.total_size
    assert release["ratio"] == pytest.approx(release["all_time_uploaded"] / release["size"])
    assert trackers[tracker]["status"] == "working"
    assert (trackers[dead]["status"], trackers[dead]["message"]) == ("error", "Connection refused")

    by_release = (("release", name),)
    assert samples[("m7b_seed_uploaded_bytes_total", by_release)] == release["uploaded"]
    assert samples[("m7b_seed_release_size_bytes", by_release)] == pub.meta.total_size
    assert samples[("m7b_seed_release_state", (("release", name), ("state", "seeding")))] == 1
    assert samples[("m7b_seed_check_passed", by_release)] == 1
    for url_, status in ((tracker, "working"), (dead, "error")):
        assert samples[("m7b_seed_tracker_status", (("release", name), ("status", status), ("tracker", url_)))]

    # the JSON stream names the bound port, and the server stops with the seed
    status_events = [e for e in events if e["event"] == "status"]
    assert {e["status_port"] for e in status_events} == {int(url.rsplit(":", 1)[1].strip("/"))}
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", status_events[0]["status_port"])) != 0


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (scripts/setup)")
def test_status_page_in_a_headless_browser_shows_the_figures(cli, m7b_home, publish, tmp_path: Path) -> None:
    pub = publish()
    seed, proc, url = seeded_and_fetched(cli, m7b_home, pub, [])
    browser = ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}"]
    shot = tmp_path / "status.png"
    try:
        release = json.loads(get(url + "status.json")[1])["releases"][0]
        dom = subprocess.run([*browser, "--dump-dom", url], capture_output=True, text=True, timeout=60)
        subprocess.run(
            [*browser, f"--screenshot={shot}", "--window-size=1200,800", url], capture_output=True, timeout=60
        )
    finally:
        stop(proc)
        seed.__exit__(None, None, None)
    assert dom.returncode == 0, dom.stderr
    name = pub.folder.name.lower()
    row = dom.stdout.split(f'id="release-{name}"', 1)[1].split("</tr>", 1)[0]
    assert f">{name}<" in row and ">seeding<" in row and release["name"] == name
    assert f"{release['uploaded']:,} bytes" in row
    assert "verdict" in dom.stdout and ">passed<" in dom.stdout
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


@pytest.mark.slow
def test_a_bad_or_busy_status_address_fails_before_serving(cli, m7b_home, publish) -> None:
    pub = publish()
    bad = cli("seed", pub.folder, *LOOPBACK, "--status", "localhost")
    assert bad.code == 4 and "status address 'localhost': expected HOST:PORT" in bad.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = cli("seed", pub.folder, *LOOPBACK, "--status", f"127.0.0.1:{port}")
    assert taken.code == 7 and f"cannot serve the status page on 127.0.0.1:{port}" in taken.stderr
    assert not (m7b_home / "resume").exists()  # no recheck ran, nothing was recorded


@pytest.mark.slow
def test_hundreds_of_idle_status_clients_neither_starve_the_swarm_nor_lock_out_the_page(cli, m7b_home, publish) -> None:
    """A seed under a 1,024-descriptor limit: 900 clients connect to its status port and say nothing (a slowloris),
    others send half a request or vanish before reading. The seed keeps its descriptors for the swarm (an honest
    fetch completes), the page still answers, and nothing is printed about the clients that went away."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))  # the test's own 900 sockets
    pub = publish()
    idle: list[socket.socket] = []
    with running_seed(pub.folder, "--status", "127.0.0.1:0", nofile=1024) as (proc, status):
        try:
            port = status["status_port"]
            for _ in range(900):
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            for partial in (b"GET / HTTP/1.1\r\nHost: x\r\n", b"GET /metrics HTTP/1.1\r\n\r\n", b"\x16\x03\x01"):
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    s.sendall(partial)  # and close at once: half a request, or one whose answer nobody reads
            held = len(os.listdir(f"/proc/{proc.pid}/fd"))
            assert held < 400, f"the seed holds {held} descriptors with 900 idle status clients"
            kind, text = get(status["status_url"] + "status.json")  # the operator is not locked out
            assert kind == "application/json" and json.loads(text)["releases"][0]["state"] == "seeding"
            fetched = cli(
                "fetch",
                pub.magnet,
                "--peer",
                f"127.0.0.1:{status['listen_port']}",
                *LOOPBACK,
                "--timeout",
                "60",
                env={"M7B_HOME": str(m7b_home / "leecher")},
            )
            assert fetched.code == 0, fetched.stderr
        finally:
            for s in idle:
                s.close()
        proc.send_signal(signal.SIGTERM)
        _, errors = proc.communicate(timeout=30)
    assert proc.returncode == 0, errors
    assert "Traceback" not in errors and "BrokenPipe" not in errors, errors


def test_the_status_server_answers_head_refuses_other_methods_and_caps_what_it_reads() -> None:
    board = StatusBoard(6881)
    with StatusServer(board, "127.0.0.1", 0, ServerLimits(max_connections=4, request_seconds=1)) as server:

        def ask(raw: bytes) -> bytes:
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
                s.sendall(raw)
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
                return b"".join(chunks)

        head = ask(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")  # headers only
        length = int(head.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
        page = ask(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert len(page.split(b"\r\n\r\n", 1)[1]) == length and b'name="viewport"' in page
        assert ask(b"POST / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405 ")
        assert ask(b"GET /nothing HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404 ")
        assert ask(b"hello\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        assert ask(b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 431 ")
        silent = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(10)]
        try:
            assert wait_for(lambda: server.connections <= 4, 5)  # never more than the cap
            assert ask(b"GET /status.json HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200 ")  # room made for it
            assert wait_for(lambda: server.connections == 0, 5)  # the silent ones time out
        finally:
            for s in silent:
                s.close()
