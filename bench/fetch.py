"""Fetch and seed speed on a loopback swarm: m7b vs aria2c vs a plain libtorrent client.

One seeder on 127.0.0.1 serves a synthetic release (default: bench-2g, 2.16 GB) announced through opentracker;
the same magnet is fetched by `m7b fetch`, by `aria2c` and by a plain libtorrent client with default settings,
each into a fresh folder. Then `m7b seed` and a plain libtorrent seeder each serve four concurrent leechers.

    flock /tmp/m7b-bench.lock python bench/fetch.py [--preset bench-2g] [--work bench/out/fetch]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from m7b.mirror.create import create_release
from m7b.mirror.tracker import free_port, local_opentracker
from m7b.synth import synthesize

MIB = 1 << 20
M7B = [sys.executable, "-m", "m7b"]
PLAIN = [sys.executable, str(Path(__file__).with_name("plain_client.py"))]
ARIA2 = [
    "aria2c",
    "--enable-dht=false",
    "--enable-dht6=false",
    "--bt-enable-lpd=false",
    "--enable-peer-exchange=false",
    "--seed-time=0",
    "--file-allocation=none",
    "--summary-interval=0",
    "--console-log-level=warn",
    "--bt-save-metadata=false",
]


def first_json(proc: subprocess.Popen, until) -> dict:
    for line in proc.stdout:
        doc = json.loads(line)
        if until(doc):
            return doc
    raise RuntimeError(f"{proc.args[:4]} ended before it was ready: {proc.stderr.read() if proc.stderr else ''}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def seeder(kind: str, folder: Path, torrent: Path) -> Iterator[tuple[int, int]]:
    """Start a seeder of `kind` ("m7b" or "plain"); yield (port, pid) once every piece is checked."""
    if kind == "m7b":
        home = folder.parent / f"seed-home-{os.getpid()}"
        shutil.rmtree(home, ignore_errors=True)
        args = [*M7B, "seed", str(folder), "--loopback", "--listen", "127.0.0.1:0", "--json", "--interval", "1"]
        env = {**os.environ, "M7B_HOME": str(home)}
        ready = lambda d: d.get("releases") and d["releases"][0]["state"] == "seeding"  # noqa: E731
    else:
        args, env = [*PLAIN, "seed", str(torrent), str(folder.parent)], dict(os.environ)
        ready = lambda d: "port" in d  # noqa: E731
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env)
    try:
        doc = first_json(proc, ready)
        yield doc.get("port") or doc["listen_port"], proc.pid
    finally:
        proc.terminate()
        proc.wait(30)


def fetch_command(client: str, magnet: str, dest: Path, peer: int | None) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if client == "m7b":
        env["M7B_HOME"] = str(dest / "home")
        peers = ["--peer", f"127.0.0.1:{peer}"] if peer else []
        return [
            *M7B,
            "fetch",
            magnet,
            "--dest",
            str(dest / "data"),
            "--loopback",
            "--listen",
            "127.0.0.1:0",
            "--json",
            *peers,
        ], env
    if client == "aria2c":
        return [*ARIA2, f"--dir={dest}", magnet], env
    return [*PLAIN, "fetch", magnet, str(dest), *([str(peer)] if peer else [])], env


def timed_fetches(client: str, magnet: str, work: Path, count: int, peer: int | None) -> float:
    """Run `count` fetches by `client` at once into fresh folders under `work`; return the wall time (process
    start to the last one's exit) until all finished."""
    dests = [work / f"{client}-{i}" for i in range(count)]
    for d in dests:
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    start = time.monotonic()
    commands = [fetch_command(client, magnet, d, peer) for d in dests]
    procs = [
        subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for args, env in commands
    ]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"{client} failed: {err[-2000:]}")
    seconds = time.monotonic() - start
    for d in dests:
        shutil.rmtree(d, ignore_errors=True)
    return seconds


def compare_fetch(
    magnet: str, info_hash: str, port: int, folder: Path, torrent: Path, work: Path, size: int, repeats: int
) -> dict[str, float]:
    """The same magnet, found through the tracker, fetched by each client into a fresh folder: best seconds."""
    results: dict[str, float] = {}
    with local_opentracker(work / "tracker-run", [info_hash], port=port), seeder("m7b", folder, torrent):
        for client in ("m7b", "aria2c", "plain"):
            runs = [timed_fetches(client, magnet, work, 1, None) for _ in range(repeats)]
            seconds = results[client] = min(runs)
            print(
                f"fetch  {client:7s} {seconds:7.2f} s  {size / MIB / seconds:7.1f} MiB/s   runs "
                f"{', '.join(f'{r:.2f}' for r in runs)}",
                flush=True,
            )
    print(
        f"ratio m7b/aria2c time: {results['m7b'] / results['aria2c']:.2f} (target <= 0.60); "
        f"m7b/plain libtorrent: {results['m7b'] / results['plain']:.2f}"
    )
    return results


def compare_seed(
    magnet: str, folder: Path, torrent: Path, work: Path, size: int, leechers: int, repeats: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Both seeders run side by side; batches of `leechers` concurrent m7b fetches alternate between them (the
    first batch of each round goes to a different seeder). Best aggregate MiB/s and seeder CPU s per GiB."""
    runs: dict[str, list[float]] = {"m7b": [], "plain": []}
    cpu: dict[str, float] = {"m7b": 0.0, "plain": 0.0}
    with seeder("m7b", folder, torrent) as m7b_seed, seeder("plain", folder, torrent) as plain_seed:
        seeds = {"m7b": m7b_seed, "plain": plain_seed}
        for round_ in range(repeats):
            for kind in ("m7b", "plain") if round_ % 2 else ("plain", "m7b"):
                port, pid = seeds[kind]
                before = cpu_seconds(pid)
                runs[kind].append(timed_fetches("m7b", magnet, work, leechers, port))
                cpu[kind] += cpu_seconds(pid) - before
    aggregate = {k: leechers * size / MIB / min(v) for k, v in runs.items()}
    cpu_per_gib = {k: cpu[k] / (repeats * leechers * size / (1 << 30)) for k in cpu}
    for kind in ("m7b", "plain"):
        print(
            f"seed   {kind:7s} {leechers} leechers into {work} in {min(runs[kind]):7.2f} s: aggregate "
            f"{aggregate[kind]:7.1f} MiB/s, seeder CPU {cpu_per_gib[kind]:.2f} s/GiB served   runs "
            f"{', '.join(f'{r:.2f}' for r in runs[kind])}",
            flush=True,
        )
    print(
        f"ratio m7b seed / plain libtorrent seed aggregate: {aggregate['m7b'] / aggregate['plain']:.2f} "
        f"(target >= 1.00); seeder CPU per GiB m7b/plain: {cpu_per_gib['m7b'] / cpu_per_gib['plain']:.2f}"
    )
    return aggregate, cpu_per_gib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="bench-2g")
    parser.add_argument("--work", type=Path, default=Path("bench/out/fetch"))
    parser.add_argument("--leechers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the best is reported")
    parser.add_argument("--skip-fetch", action="store_true", help="only the seeding comparison")
    parser.add_argument(
        "--leecher-dir",
        type=Path,
        default=Path("/dev/shm/m7b-bench") if Path("/dev/shm").is_dir() else None,
        help="where the four leechers write (default: tmpfs, so the seeder is measured, not the disk)",
    )
    opts = parser.parse_args()
    work = opts.work.resolve()
    folder = work / "src" / f"Bench-{opts.preset}"
    if not folder.is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        synthesize(folder, opts.preset, seed=0)
    port = free_port()
    made = create_release(folder, trackers=[f"http://127.0.0.1:{port}/announce"], manifest_name="bench-release")
    torrent = folder.parent / f"{folder.name}.torrent"
    torrent.write_bytes(made.torrent)
    size = made.meta.total_size
    print(
        f"release {folder.name}: {size / MIB:,.0f} MiB, {made.meta.num_pieces} pieces of "
        f"{made.meta.piece_length // 1024} KiB; cpus {os.cpu_count()}"
    )
    fetched = (
        {}
        if opts.skip_fetch
        else compare_fetch(made.magnet, made.meta.info_hash, port, folder, torrent, work, size, opts.repeats)
    )
    aggregate, cpu = compare_seed(
        made.magnet.split("&tr=")[0], folder, torrent, opts.leecher_dir or work, size, opts.leechers, opts.repeats
    )
    print(
        json.dumps(
            {"size_bytes": size, "fetch_seconds": fetched, "seed_aggregate_mib_s": aggregate, "seed_cpu_s_per_gib": cpu}
        )
    )


if __name__ == "__main__":
    main()
