"""Benchmark `m7b verify` and `m7b convert` on the bench-2g synthetic release (2.16 GB) against their anchors.

    flock /tmp/m7b-bench.lock python bench/verify_convert.py [--work DIR] [--runs 3]

Anchors: verify against `sha256sum` then `md5sum` over the same files (what a careful user does by hand; target
<= 0.35x); convert against `cp` of the checkpoint (target <= 2x; `cp` + `sync` also shown, since convert fsyncs);
peak private memory of convert (RssAnon sampled from /proc/<pid>/status every 5 ms; target <= 15% of the
checkpoint + 300 MB) next to its max RSS (which counts mapped file pages). `hash_only_s` is the one-pass hashing
(sha256 + v1 pieces) alone, in-process: what verify costs beyond its fixed start (interpreter, torch import).
Files are read once before timing so every contender reads from the page cache. Prints one JSON document; best
of --runs for each figure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

from m7b.manifests.architecture import load_params
from m7b.manifests.schema import CheckpointFacts, FileFacts, Manifest, TorrentFacts
from m7b.manifests.writer import manifest_to_toml
from m7b.synth import RELEASE_FILES, synthesize

NAME = "bench-2g"
PIECE = 4 << 20


def _sha256(path: Path, md5: bool = False) -> tuple[str, str | None]:
    s, m = hashlib.sha256(), hashlib.md5() if md5 else None
    with open(path, "rb") as fh:
        while chunk := fh.read(16 << 20):
            s.update(chunk)
            if m:
                m.update(chunk)
    return s.hexdigest(), m.hexdigest() if m else None


def prepare(work: Path) -> tuple[Path, Path]:
    """The release in a bench store, its v1 torrent, and two manifests: md5 everywhere / md5 as Mistral published."""
    import libtorrent as lt

    home = work / "home"
    root = home / "releases" / NAME
    if not (root / "consolidated.00.pth").is_file():
        shutil.rmtree(root, ignore_errors=True)
        root.parent.mkdir(parents=True, exist_ok=True)
        synthesize(root, "bench-2g", seed=0)
    fs = lt.file_storage()
    for f in RELEASE_FILES:
        fs.add_file(f"{NAME}/{f}", (root / f).stat().st_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torrent = work / f"{NAME}.torrent"
        if not torrent.is_file():
            ct = lt.create_torrent(fs, PIECE, lt.create_torrent.v1_only)
            lt.set_piece_hashes(ct, str(root.parent))
            torrent.write_bytes(lt.bencode(ct.generate()))
        ih = str(lt.torrent_info(str(torrent)).info_hashes().v1)
    (home / "torrents").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(torrent, home / "torrents" / f"{ih}.torrent")
    digests = {f: _sha256(root / f, md5=True) for f in RELEASE_FILES}
    arch = load_params(root / "params.json")
    for variant, md5_for in (("all-md5", set(RELEASE_FILES)), ("tokenizer-md5", {"tokenizer.model"})):
        files = tuple(
            FileFacts(f, (root / f).stat().st_size, digests[f][0], digests[f][1] if f in md5_for else None)
            for f in RELEASE_FILES
        )
        manifest = Manifest(
            name=NAME,
            title="bench-2g",
            publisher="m7b bench",
            license="Apache-2.0",
            torrent=TorrentFacts(name=NAME, info_hash_v1=ih, files_complete=True),
            files=files,
            architecture=arch,
            checkpoint=CheckpointFacts(len(arch.tensor_shapes()), arch.parameter_count(), "bfloat16"),
            sources={
                "release": "bench",
                "torrent": "bench",
                "architecture": "bench",
                "checkpoint": "bench",
                **{f"files.{f}": "bench" for f in RELEASE_FILES},
            },
        )
        (work / f"{variant}.toml").write_text(manifest_to_toml(manifest))
    return home, root


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int, int]:
    """Wall seconds, peak RssAnon (bytes, sampled) and max RSS (bytes) of a command and its children."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        status = Path(f"/proc/{proc.pid}/status")
        while not stop.is_set():
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        peak[0] = max(peak[0], int(line.split()[1]) * 1024)
            except OSError:
                pass
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stop.set()
    sampler.join()
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {code}: {stderr[-2000:]}")
    return wall, peak[0], usage.ru_maxrss * 1024


def hash_only(root: Path, work: Path) -> tuple[float]:
    """The one-pass hashing alone, in this process (no interpreter start, no torch): sha256 + v1 pieces."""
    from m7b.torrent import load_torrent
    from m7b.verify.digest import FileDigestLane, read_stream
    from m7b.verify.pieces import V1PieceLane, read_items

    _, plan = load_torrent(work / f"{NAME}.torrent")
    lanes = [FileDigestLane("sha256"), V1PieceLane(plan.piece_length, plan.v1_hashes)]
    start = time.perf_counter()
    read_stream(read_items(plan, root), lanes)
    assert not lanes[1].failed
    return (time.perf_counter() - start,)


def best(runs: int, fn) -> tuple[float, ...]:
    results = [fn() for _ in range(runs)]
    return min(results, key=lambda r: r[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("M7B_BENCH_DIR", "/tmp/m7b-bench")))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    home, root = prepare(work)
    env = {**os.environ, "M7B_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    files = [str(root / f) for f in RELEASE_FILES]
    checkpoint = root / "consolidated.00.pth"
    size = checkpoint.stat().st_size
    total = sum(Path(f).stat().st_size for f in files)
    for f in files:  # every contender reads from the page cache
        with open(f, "rb") as fh:
            while fh.read(64 << 20):
                pass
    m7b = [sys.executable, "-m", "m7b"]
    doc: dict[str, object] = {
        "release": NAME,
        "bytes": total,
        "checkpoint_bytes": size,
        "runs": args.runs,
        "cpus": os.cpu_count(),
    }
    sha = best(args.runs, lambda: timed(["sha256sum", *files], env))
    md5 = best(args.runs, lambda: timed(["md5sum", *files], env))
    doc["sha256sum_s"], doc["md5sum_s"] = sha[0], md5[0]
    doc["hand_s"] = hand = sha[0] + md5[0]
    for variant in ("all-md5", "tokenizer-md5"):
        manifests = home / "manifests"
        manifests.mkdir(exist_ok=True)
        shutil.copyfile(work / f"{variant}.toml", manifests / f"{NAME}.toml")
        v = best(args.runs, lambda: timed([*m7b, "verify", NAME, "--json"], env))
        doc[f"verify_{variant}_s"] = v[0]
        doc[f"verify_{variant}_ratio"] = v[0] / hand
        doc[f"verify_{variant}_peak_anon"] = v[1]

    doc["hash_only_s"] = best(args.runs, lambda: hash_only(root, work))[0]
    doc["hash_only_gb_per_s"] = total / 1e9 / doc["hash_only_s"]

    def cp(sync: bool) -> tuple[float, int, int]:
        target = work / "cp-target"
        target.unlink(missing_ok=True)
        cmd = ["sh", "-c", f"cp '{checkpoint}' '{target}'" + (f" && sync '{target}'" if sync else "")]
        try:
            return timed(cmd, env)
        finally:
            target.unlink(missing_ok=True)

    def sha256_alone() -> tuple[float]:
        """sha256 of the checkpoint's bytes on one core, the fastest way found here: each 256 KiB copied from the
        mapped file into a buffer that stays in cache, hashed there (convert's hash lane alone)."""
        with open(checkpoint, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view, stage = memoryview(mm), memoryview(bytearray(256 << 10))
            digest = hashlib.sha256()
            start = time.perf_counter()
            for at in range(0, len(view), len(stage)):
                n = min(len(stage), len(view) - at)
                stage[:n] = view[at : at + n]
                digest.update(stage[:n])
            elapsed = time.perf_counter() - start
            view.release()
        return (elapsed,)

    # What convert cannot go below: SHA256SUMS needs the sha256 of its output, as many bytes as the checkpoint.
    doc["sha256_of_checkpoint_bytes_s"] = best(args.runs, sha256_alone)[0]
    doc["cp_s"] = best(args.runs, lambda: cp(False))[0]
    doc["cp_sync_s"] = best(args.runs, lambda: cp(True))[0]
    for layout in ("native", "hf"):

        def convert(layout: str = layout) -> tuple[float, int, int]:
            out = work / f"out-{layout}"
            shutil.rmtree(out, ignore_errors=True)
            try:
                return timed([*m7b, "convert", NAME, "--to", layout, "--out", str(out), "--json"], env)
            finally:
                shutil.rmtree(out, ignore_errors=True)

        c = best(args.runs, convert)
        doc[f"convert_{layout}_s"] = c[0]
        doc[f"convert_{layout}_ratio_cp"] = c[0] / doc["cp_s"]
        doc[f"convert_{layout}_ratio_cp_sync"] = c[0] / doc["cp_sync_s"]
        doc[f"convert_{layout}_peak_anon"] = c[1]
        doc[f"convert_{layout}_max_rss"] = c[2]
    doc["memory_target"] = int(0.15 * size + 300e6)
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
