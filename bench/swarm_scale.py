"""The swarm's scale, measured: one `m7b seed` and N leechers vs one HTTP origin (nginx) and N downloaders.

Every host (the origin and each downloader) lives in its own network namespace, joined by veth pairs to one
bridge, with a token-bucket cap (tc tbf) in both directions of its link. The origin runs `m7b seed` plus a
tracker (opentracker) for the torrent run, and nginx for the HTTP run; it is the same host with the same cap.

    sudo PYTHONPATH=$PWD python bench/swarm_scale.py [--leechers 1,4,16] [--rate-mbit 20] [--preset tiny]

Torrent leechers are `m7b fetch FILE.torrent` (each piece SHA-1-checked as it lands; it exits 0 only when every
piece passed). HTTP downloaders are curl, then `sha256sum -c` against the release's digests. "Done" is when the
last of the N holds a verified copy. Origin bytes are what left the origin's interface (Ethernet/IP/TCP included).
Needs root, iproute2 (ip netns, tc), nginx, opentracker, curl. Not a test: never run from pytest.
Prints a table, then a JSON summary on the last line. Namespaces, links and processes are removed on any exit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

PREFIX = "m7bs"  # every namespace and link this bench makes starts with it
SUBNET = "10.88.0"
ORIGIN_IP = f"{SUBNET}.2"
TRACKER_PORT, SEED_PORT, HTTP_PORT = 6969, 6881, 8080


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check)


@dataclass(frozen=True)
class Host:
    netns: str
    ip: str
    link: str  # the link inside the namespace

    def cmd(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *args]

    def tx_bytes(self) -> int:
        return int(sh(*self.cmd("cat", f"/sys/class/net/{self.link}/statistics/tx_bytes")).stdout)


def cleanup() -> None:
    """Remove every namespace and link this bench made (also leftovers of an earlier, killed run)."""
    for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX):
            for pid in sh("ip", "netns", "pids", name, check=False).stdout.split():
                with suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", name, check=False)
    for line in sh("ip", "-o", "link", "show", check=False).stdout.splitlines():
        link = line.split(":")[1].strip().split("@")[0]
        if link.startswith(PREFIX):
            sh("ip", "link", "del", link, check=False)


def cap(run: Sequence[str], link: str, rate_mbit: float) -> None:
    """A token bucket on `link`'s egress: `rate_mbit`, a burst of ~8 ms, at most 50 ms queued."""
    burst = max(int(rate_mbit * 1e6 / 8 * 0.008), 16_000)
    sh(*run, "tc", "qdisc", "add", "dev", link, "root", "tbf", "rate", f"{rate_mbit}mbit", "burst", str(burst),
       "latency", "50ms")  # fmt: skip


@contextmanager
def testbed(n_hosts: int, rate_mbit: float) -> Iterator[list[Host]]:
    """The origin (hosts[0]) and n_hosts - 1 downloaders on one bridge, each capped both ways."""
    cleanup()
    bridge = f"{PREFIX}br"
    try:
        sh("ip", "link", "add", bridge, "type", "bridge")
        sh("ip", "link", "set", bridge, "up")
        hosts = []
        for i in range(n_hosts):
            host = Host(f"{PREFIX}-{i}", f"{SUBNET}.{i + 2}", "eth0")
            outside = f"{PREFIX}v{i}"
            sh("ip", "netns", "add", host.netns)
            sh("ip", "link", "add", outside, "type", "veth", "peer", "name", f"{PREFIX}p{i}")
            sh("ip", "link", "set", f"{PREFIX}p{i}", "netns", host.netns)
            sh(*host.cmd("ip", "link", "set", f"{PREFIX}p{i}", "name", host.link))
            sh(*host.cmd("ip", "addr", "add", f"{host.ip}/24", "dev", host.link))
            sh(*host.cmd("ip", "link", "set", host.link, "up"))
            sh(*host.cmd("ip", "link", "set", "lo", "up"))
            sh("ip", "link", "set", outside, "master", bridge)
            sh("ip", "link", "set", outside, "up")
            cap(host.cmd(), host.link, rate_mbit)  # upload
            cap([], outside, rate_mbit)  # download
            hosts.append(host)
        yield hosts
    finally:
        cleanup()


@dataclass
class Run:
    mode: str  # torrent / http
    leechers: int
    seconds_all_done: float  # from the common start until the last leecher holds a verified copy
    seconds_first_done: float
    seconds_mean: float
    origin_bytes: int  # bytes that left the origin's interface during the run
    origin_copies: float  # origin_bytes / release size
    origin_payload: int | None = None  # the seed's own payload count (torrent only)
    fetch_seconds_max: float | None = None  # the longest `m7b fetch` reported itself (no Python start-up)


def release_digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def wait_all(procs: list[subprocess.Popen[str]], start: float, timeout: float) -> list[float]:
    """Each process's finish time after `start`; every one must exit 0."""
    done: dict[int, float] = {}
    while len(done) < len(procs):
        for i, p in enumerate(procs):
            if i not in done and p.poll() is not None:
                done[i] = time.monotonic() - start
                if p.returncode != 0:
                    raise RuntimeError(f"leecher {i} exited {p.returncode}: {p.stderr.read() if p.stderr else ''}")
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{len(procs) - len(done)} of {len(procs)} leechers not done after {timeout} s")
        time.sleep(0.05)
    return [done[i] for i in range(len(procs))]


def summarize(
    mode: str, times: list[float], origin_bytes: int, size: int, payload: int | None = None, inner: float | None = None
) -> Run:
    return Run(mode, len(times), round(max(times), 2), round(min(times), 2), round(sum(times) / len(times), 2),
               origin_bytes, round(origin_bytes / size, 2), payload, inner)  # fmt: skip


def m7b(host: Host, home: Path, *args: str) -> list[str]:
    return host.cmd("env", f"M7B_HOME={home}", sys.executable, "-m", "m7b", *args)


def leecher_command(client: str, host: Host, torrent: Path, work: Path) -> list[str]:
    """`m7b fetch`, or aria2c (also checks every piece's SHA-1; starts in milliseconds, not a Python import)."""
    copy = str(work / host.netns / "copy")
    if client == "aria2c":
        aria2 = ["--seed-time=0", "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false"]
        aria2 += [f"--listen-port={SEED_PORT}", "--file-allocation=none", "--console-log-level=error", "--quiet"]
        return host.cmd("aria2c", "-d", copy, *aria2, str(torrent))
    fetch = ["--loopback", "--listen", f"{host.ip}:{SEED_PORT}", "--dest", copy, "--timeout", "300", "--json"]
    return m7b(host, work / host.netns, "fetch", str(torrent), *fetch)


def torrent_run(
    hosts: list[Host], release: Path, torrent: Path, info_hash: str, work: Path, size: int, client: str = "m7b"
) -> Run:
    origin, leechers = hosts[0], hosts[1:]
    tracker_dir = work / "tracker"
    tracker_dir.mkdir(mode=0o755)
    (tracker_dir / "whitelist").write_text(info_hash + "\n")
    tracker = subprocess.Popen(
        origin.cmd(
            "opentracker",
            "-i",
            ORIGIN_IP,
            "-p",
            str(TRACKER_PORT),
            "-P",
            str(TRACKER_PORT),
            "-w",
            "whitelist",
            "-u",
            "nobody",
            "-d",
            str(tracker_dir),
        ),  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seed = subprocess.Popen(
        m7b(
            origin,
            work / "seed-home",
            "seed",
            str(release),
            "--loopback",
            "--listen",
            f"{ORIGIN_IP}:{SEED_PORT}",
            "--json",
            "--interval",
            "1",
        ),  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert seed.stdout
        for line in seed.stdout:
            if all(r["state"] == "seeding" for r in json.loads(line)["releases"]):
                break
        else:
            raise RuntimeError(f"the seed did not start: {seed.stderr.read() if seed.stderr else ''}")
        tx0, start = origin.tx_bytes(), time.monotonic()
        procs = [
            subprocess.Popen(
                leecher_command(client, h, torrent, work),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for h in leechers
        ]
        times = wait_all(procs, start, timeout=900)
        inner = None
        if client == "m7b":
            inner = max(json.loads(p.stdout.read().splitlines()[-1])["seconds"] for p in procs if p.stdout)
        origin_bytes = origin.tx_bytes() - tx0
        seed.send_signal(signal.SIGTERM)
        out, _ = seed.communicate(timeout=60)
        statuses = [json.loads(line) for line in out.splitlines() if '"status"' in line]
        payload = statuses[-1]["releases"][0]["uploaded"] if statuses else None
        return summarize(f"torrent/{client}", times, origin_bytes, size, payload, inner)
    finally:
        for p in (seed, tracker):
            if p.poll() is None:
                p.kill()
                p.wait()


NGINX_CONF = """worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {work}/nginx-tmp;
    server {{ listen {ip}:{port}; root {root}; }}
}}
"""


def http_run(hosts: list[Host], release: Path, work: Path, size: int) -> Run:
    origin, leechers = hosts[0], hosts[1:]
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=work, ip=ORIGIN_IP, port=HTTP_PORT, root=release.parent))
    nginx = subprocess.Popen(origin.cmd("nginx", "-c", str(conf), "-g", "daemon off;"), stderr=subprocess.PIPE)
    digests = release_digests(release)
    sums = work / "SHA256SUMS"
    sums.write_text("".join(f"{d}  {p}\n" for p, d in digests.items()))
    base = f"http://{ORIGIN_IP}:{HTTP_PORT}/{release.name}"
    try:
        deadline = time.monotonic() + 10
        while sh(
            *origin.cmd("curl", "-sf", "-o", "/dev/null", f"{base}/{next(iter(digests))}"), check=False
        ).returncode:
            if nginx.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start: {nginx.stderr.read() if nginx.stderr else ''}")
            time.sleep(0.1)
        tx0, start = origin.tx_bytes(), time.monotonic()
        procs = []
        for h in leechers:
            copy = work / h.netns / "http"
            fetch = " ".join(f"-o '{copy}/{p}' '{base}/{p}'" for p in digests)
            script = f"curl -sf --create-dirs {fetch} && cd '{copy}' && sha256sum --quiet -c '{sums}'"
            procs.append(subprocess.Popen(h.cmd("sh", "-c", script), stderr=subprocess.PIPE, text=True))
        times = wait_all(procs, start, timeout=1800)
        return summarize("http", times, origin.tx_bytes() - tx0, size)
    finally:
        nginx.terminate()
        nginx.wait(10)


def startup_seconds(host: Host, work: Path) -> float:
    """How long `m7b` takes to start and exit in a namespace (what every torrent leecher pays first)."""
    start = time.monotonic()
    sh(*m7b(host, work / "startup", "--help"))
    return round(time.monotonic() - start, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leechers", default="1,4,16", help="comma-separated N to run (default 1,4,16)")
    parser.add_argument("--rate-mbit", type=float, default=20.0, help="per-host cap, each direction (default 20)")
    parser.add_argument("--preset", default="tiny", help="synthetic release preset (default tiny, 8.8 MB)")
    parser.add_argument("--modes", default="m7b,aria2c,http", help="torrent leechers m7b / aria2c, and/or http")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces, tc)", file=sys.stderr)
        return 2
    for tool in ("nginx", "opentracker", "curl", "tc", "aria2c"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (apt-get install nginx opentracker curl iproute2)", file=sys.stderr)
            return 2
    from m7b.mirror.create import create_release
    from m7b.synth import synthesize

    counts = [int(n) for n in args.leechers.split(",")]
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="m7b-swarm-scale-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        release = synthesize(root / "pub" / "release", args.preset, seed=0).path
        made = create_release(release, trackers=[f"http://{ORIGIN_IP}:{TRACKER_PORT}/announce"], web_seeds=[],
                              manifest_name="scale", publisher="bench")  # fmt: skip
        torrent = release.parent / f"{release.name}.torrent"
        torrent.write_bytes(made.torrent)
        for p in [root / "pub", *(root / "pub").rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        size = made.meta.total_size
        print(f"release: {args.preset}, {size:,} bytes, {made.meta.num_pieces} pieces; cap {args.rate_mbit} Mbit/s "
              f"per host each way")  # fmt: skip
        startup = None
        for n in counts:
            for mode in args.modes.split(","):
                work = root / f"{mode}-{n}"
                work.mkdir(mode=0o755)
                with testbed(n + 1, args.rate_mbit) as hosts:
                    if startup is None:
                        startup = startup_seconds(hosts[1], work)
                    if mode == "http":
                        run = http_run(hosts, release, work, size)
                    else:
                        run = torrent_run(hosts, release, torrent, made.meta.info_hash, work, size, client=mode)
                runs.append(run)
                shutil.rmtree(work, ignore_errors=True)
                print(f"{run.mode:15} N={run.leechers:3}  all done {run.seconds_all_done:7.2f} s  first "
                      f"{run.seconds_first_done:6.2f} s  mean {run.seconds_mean:6.2f} s  origin sent "
                      f"{run.origin_bytes / 1e6:8.1f} MB = {run.origin_copies:5.2f} copies"
              + (f"  (slowest fetch's own time {run.fetch_seconds_max} s)" if run.fetch_seconds_max else ""),
              flush=True)  # fmt: skip
    summary = {
        "load_average_at_end": os.getloadavg(),
        "release_bytes": size,
        "pieces": made.meta.num_pieces,
        "rate_mbit_per_host": args.rate_mbit,
        "m7b_startup_seconds": startup,
        "runs": [asdict(r) for r in runs],
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        cleanup()
