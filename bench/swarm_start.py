"""How fast a fetch gets going: seconds from start to the first connected peer and to the first payload byte, for
m7b's fetch beside a plain libtorrent client and qBittorrent (qbittorrent-nox, through its Web API; tracker swarms
only: it cannot be given DHT bootstrap nodes) on the same swarm (a libtorrent seeder on 127.0.0.1).

Swarms: an HTTP tracker, a UDP tracker (opentracker serves both), a dead tracker (accepts, never answers) listed
before a live HTTP one, a bare magnet found through a private DHT of 8 libtorrent nodes on 127.0.0.2-9, and the
same when the seed joins the DHT only after the fetch's first lookup and cannot reach the fetch (as behind a NAT).
Both clients run in this process from the moment the library is called (m7b: `fetch_release`; plain: a session
with libtorrent's defaults, plus what a loopback swarm or a private DHT needs: several peers per address, no uTP on
loopback, the DHT's bootstrap node and subnet rules); qBittorrent from the Web API call that adds the magnet (its
own defaults, DHT/LSD/PeX off, TCP only as in the loopback profile, on the loopback interface). Target: m7b never
slower than the better of the others by more than 1 s.

    flock /tmp/m7b-bench.lock python bench/swarm_start.py [--repeats 3] [--work bench/out/swarm-start]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libtorrent as lt

from m7b.mirror.create import create_release
from m7b.mirror.fetch import fetch_release
from m7b.mirror.layout import renamed_files
from m7b.mirror.local_dht import PrivateDht, private_dht
from m7b.mirror.session import SessionOptions, session_options
from m7b.mirror.tracker import free_port, local_opentracker, silent_tracker
from m7b.progress import ProgressEvent
from m7b.store import Store
from m7b.synth import synthesize
from m7b.torrent import load_torrent

CAP = 20.0  # seconds a client is given to get its first byte

LOOPBACK: lt.settings_pack = {  # what a plain libtorrent client needs on a loopback swarm (as bench/plain_client.py)
    "listen_interfaces": "127.0.0.1:0",
    "enable_dht": False,
    "enable_lsd": False,
    "enable_upnp": False,
    "enable_natpmp": False,
    "enable_outgoing_utp": False,
    "enable_incoming_utp": False,
    "allow_multiple_connections_per_ip": True,
}


@dataclass
class Start:
    peer: float | None  # seconds to the first connected peer (None: not within CAP)
    byte: float | None  # seconds to the first payload byte


@dataclass
class Swarm:
    name: str
    magnet: str
    m7b: SessionOptions
    plain: lt.settings_pack
    qbt: QBittorrent | None = None
    info_hash: str = ""


def m7b_start(magnet: str, options: SessionOptions, work: Path, late_seed: Callable[[], None] | None) -> Start:
    seen: dict[str, float] = {}
    started = time.monotonic()

    def progress(event: ProgressEvent) -> None:
        now = time.monotonic() - started
        if event.extra.get("peers"):
            seen.setdefault("peer", now)
        if event.phase == "downloading" and event.done > 0:
            seen.setdefault("byte", now)
            raise _Enough

    home = Path(tempfile.mkdtemp(dir=work, prefix="m7b-"))
    try:
        with _lateness(late_seed):
            fetch_release(magnet, store=Store(home), options=options, timeout=CAP, progress=progress)
    except _Enough:
        pass
    except Exception as exc:  # a timeout: reported as "not within CAP"
        seen.setdefault("error", 0.0)
        print(f"    m7b: {type(exc).__name__}: {str(exc)[:120]}")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return Start(seen.get("peer"), seen.get("byte"))


class _Enough(Exception):
    """The first byte is in: the measurement is done."""


@contextlib.contextmanager
def _lateness(late_seed: Callable[[], None] | None) -> Iterator[None]:
    import threading

    thread = threading.Thread(target=late_seed, daemon=True) if late_seed else None
    if thread:
        thread.start()
    yield


def plain_start(magnet: str, pack: lt.settings_pack, work: Path, late_seed: Callable[[], None] | None) -> Start:
    started = time.monotonic()
    session = lt.session(pack)
    atp = lt.parse_magnet_uri(magnet)
    atp.save_path = tempfile.mkdtemp(dir=work, prefix="plain-")
    atp.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
    handle = session.add_torrent(atp)
    peer = byte = None
    with _lateness(late_seed):
        while time.monotonic() - started < CAP and byte is None:
            time.sleep(0.02)
            session.pop_alerts()
            st = handle.status()
            now = time.monotonic() - started
            if st.total_payload_download > 0:
                byte = now
            if peer is None and (st.num_peers > 0 or byte is not None):  # a byte came from a peer
                peer = now
    session.pause()
    shutil.rmtree(atp.save_path, ignore_errors=True)
    return Start(peer, byte)


class QBittorrent:
    """qbittorrent-nox with a profile of its own in `work`, driven through its Web API on 127.0.0.1."""

    def __init__(self, work: Path) -> None:
        import subprocess

        self.port = free_port()
        self.save = work / "qbt-data"
        config = work / "qbt" / "qBittorrent" / "config"
        config.mkdir(parents=True, exist_ok=True)
        (config / "qBittorrent.conf").write_text(
            "[LegalNotice]\nAccepted=true\n\n[BitTorrent]\nSession\\DHTEnabled=false\nSession\\LSDEnabled=false\n"
            "Session\\PeXEnabled=false\nSession\\Port=0\nSession\\Interface=lo\nSession\\InterfaceName=lo\n"
            "Session\\BTProtocol=TCP\n\n"
            f"[Preferences]\nWebUI\\Port={self.port}\nWebUI\\Address=127.0.0.1\nWebUI\\LocalHostAuth=false\n"
            "WebUI\\CSRFProtection=false\nWebUI\\HostHeaderValidation=false\nConnection\\UPnP=false\n"
        )
        self.proc = subprocess.Popen(
            ["qbittorrent-nox", f"--profile={work / 'qbt'}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.call("app/version")
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("qbittorrent-nox did not answer on its Web API")

    def call(self, path: str, form: dict[str, str] | None = None) -> bytes:
        import urllib.parse
        import urllib.request

        data = urllib.parse.urlencode(form).encode() if form is not None else None
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v2/{path}", data, timeout=5) as answer:
            return bytes(answer.read())

    def start(self, magnet: str, info_hash: str, late_seed: Callable[[], None] | None) -> Start:
        peer = byte = None
        started = time.monotonic()
        self.call("torrents/add", {"urls": magnet, "savepath": str(self.save)})
        with _lateness(late_seed):
            while time.monotonic() - started < CAP and byte is None:
                info = json.loads(self.call(f"torrents/info?hashes={info_hash}") or b"[]")
                now = time.monotonic() - started
                if info and info[0]["downloaded"] > 0:
                    byte = now
                if info and peer is None and (info[0]["num_seeds"] + info[0]["num_leechs"] > 0 or byte is not None):
                    peer = now
                time.sleep(0.02)
        self.call("torrents/delete", {"hashes": info_hash, "deleteFiles": "true"})
        return Start(peer, byte)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def seeder(torrent: Path, folder: Path, pack: lt.settings_pack, trackers: list[str]) -> lt.session:
    ti, meta = load_torrent(torrent)
    session = lt.session(pack)
    atp = lt.add_torrent_params()
    atp.ti, atp.save_path, atp.renamed_files = ti, str(folder), renamed_files(meta)
    atp.trackers = trackers
    atp.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
    atp.flags |= lt.torrent_flags.upload_mode
    handle = session.add_torrent(atp)
    while not handle.status().is_seeding:
        time.sleep(0.05)
    return session


def dht_client_pack(host: str, bootstrap: str) -> lt.settings_pack:
    return {
        "listen_interfaces": f"{host}:0",
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "dht_bootstrap_nodes": bootstrap,
        "dht_restrict_routing_ips": False,
        "dht_restrict_search_ips": False,
        "dht_ignore_dark_internet": False,
    }


def fmt(value: float | None) -> str:
    return f"{value:6.2f}" if value is not None else f">{CAP:4.0f} "


def median(values: list[float | None]) -> float | None:
    """The median of the runs that got there (None when none did)."""
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


def run(swarm: Swarm, work: Path, repeats: int) -> dict[str, dict[str, float | None]]:
    figures: dict[str, dict[str, float | None]] = {}
    for client in ("m7b", "plain", "qbt") if swarm.qbt else ("m7b", "plain"):
        starts = []
        for _ in range(repeats):
            if client == "m7b":
                starts.append(m7b_start(swarm.magnet, swarm.m7b, work, None))
            elif client == "plain":
                starts.append(plain_start(swarm.magnet, swarm.plain, work, None))
            else:
                assert swarm.qbt is not None
                starts.append(swarm.qbt.start(swarm.magnet, swarm.info_hash, None))
        got = sum(s.byte is not None for s in starts)
        figures[client] = {
            "peer": median([s.peer for s in starts]),
            "byte": median([s.byte for s in starts]),
            "runs_with_a_byte": got,
            "runs": len(starts),
        }
        runs = ", ".join(fmt(s.byte).strip() for s in starts)
        print(
            f"{swarm.name:24s} {client:6s} first peer {fmt(figures[client]['peer'])} s   first byte "
            f"{fmt(figures[client]['byte'])} s   (first byte, each run: {runs})"
            + (f"  {len(starts) - got} of {len(starts)} runs got no byte in {CAP:g} s" if got < len(starts) else ""),
            flush=True,
        )
    m = figures["m7b"]["byte"]
    others = {c: f["byte"] for c, f in figures.items() if c != "m7b" and f["byte"] is not None}
    if m is None:
        print(f"{swarm.name:24s} m7b got no byte within {CAP:g} s: FAILED")
    elif not others:
        print(f"{swarm.name:24s} m7b first byte {m:.2f} s; no other client got a byte within {CAP:g} s")
    else:
        best, b = min(others.items(), key=lambda kv: kv[1])
        verdict = "ok" if m <= b + 1.0 else "SLOWER by > 1 s"
        ratios = ", ".join(f"m7b/{c} {m / v:.2f}" for c, v in others.items())
        print(f"{swarm.name:24s} first byte {ratios}; vs the better ({best}) {m - b:+.2f} s: {verdict}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench/out/swarm-start"))
    parser.add_argument("--repeats", type=int, default=3, help="runs per client and swarm; the median is reported")
    parser.add_argument("--no-qbittorrent", action="store_true", help="leave qbittorrent-nox out")
    opts = parser.parse_args()
    work = opts.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    folder = synthesize(work / "src" / "mistral-tiny", "tiny", seed=0).path
    results: dict[str, Any] = {}
    port = free_port()
    http = f"http://127.0.0.1:{port}/announce"
    udp = f"udp://127.0.0.1:{port}/announce"
    made = create_release(folder, publisher="bench")
    torrent = folder.parent / f"{folder.name}.torrent"
    torrent.write_bytes(made.torrent)
    ih = made.meta.info_hash
    bare = f"magnet:?xt=urn:btih:{ih}"
    loopback = SessionOptions.loopback()
    qbt = QBittorrent(work) if shutil.which("qbittorrent-nox") and not opts.no_qbittorrent else None
    print(
        f"release {folder.name}: {made.meta.total_size:,} bytes; each figure the median of the {opts.repeats} runs "
        f"(of those that got a byte within {CAP:g} s)"
    )
    with (
        local_opentracker(work / "tracker", [ih], port=port),
        silent_tracker() as dead,
    ):
        seed = seeder(torrent, folder, LOOPBACK, [http, udp])
        for name, trackers in (("HTTP tracker", [http]), ("UDP tracker", [udp]), ("dead + live tracker", [dead, http])):
            magnet = bare + "".join(f"&tr={t}" for t in trackers)
            results[name] = run(Swarm(name, magnet, loopback, LOOPBACK, qbt, ih), work, opts.repeats)
        seed.pause()
    if qbt is not None:
        qbt.close()
    with private_dht() as dht:
        dht.seed(3, torrent, folder)
        m7b = session_options("127.0.0.40:0", dht_bootstrap=[dht.bootstrap])
        results["DHT, bare magnet"] = run(
            Swarm("DHT, bare magnet", bare, m7b, dht_client_pack("127.0.0.41", dht.bootstrap)), work, opts.repeats
        )
    late: dict[str, Any] = {}
    for client in ("m7b", "plain"):
        late[client] = _late_seed_run(client, torrent, folder, bare, work)
    results["DHT, seed joins late"] = late
    print(json.dumps(results))


def _late_seed_run(client: str, torrent: Path, folder: Path, bare: str, work: Path) -> dict[str, float | None]:
    """The seed joins the DHT after the fetch's first lookup, and cannot reach the fetch: the fetch must look
    again. One run per client (libtorrent alone looks again after dht_announce_interval, 15 minutes)."""
    ih = load_torrent(torrent)[1].info_hash
    with private_dht() as dht:

        def join_late(dht: PrivateDht = dht) -> None:
            first = dht.wait_for_lookup(ih)
            if first is not None and dht.wait_for_lookup(ih, after=first + 1.0) is not None:
                dht.seed(3, torrent, folder, reaches_out=False)

        if client == "m7b":
            options = session_options("127.0.0.40:0", dht_bootstrap=[dht.bootstrap])
            start = m7b_start(bare, options, work, join_late)
        else:
            start = plain_start(bare, dht_client_pack("127.0.0.41", dht.bootstrap), work, join_late)
    print(f"{'DHT, seed joins late':24s} {client:6s} first peer {fmt(start.peer)} s   first byte {fmt(start.byte)} s")
    return {"peer": start.peer, "byte": start.byte}


if __name__ == "__main__":
    main()
