"""`m7b seed --status`: the operator's page, JSON and Prometheus metrics, read from a real seed over HTTP."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from swarm import free_port, local_opentracker, wait_for
from test_seed import LOOPBACK, running_seed, stop

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
