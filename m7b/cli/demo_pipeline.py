"""`m7b demo`: the whole pipeline on a small synthetic release over a real local swarm.

A publisher makes a release and its torrent, a real tracker (opentracker) runs on 127.0.0.1, the publisher's
`m7b seed` serves it; the user fetches it by name through its manifest, verifies, converts (native and hf), runs
and smoke-tests it, then serves it back; aria2c, an independent client, downloads it from the user's mirror.
Every step runs the real component; the later steps run the `m7b` commands a user would type.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m7b.atomic import write_bytes, write_text
from m7b.errors import M7bError, MismatchError
from m7b.manifests.writer import manifest_to_toml
from m7b.mirror.create import create_release
from m7b.mirror.fetch import fetch_release
from m7b.mirror.seed import Mirror, open_mirror
from m7b.mirror.session import SessionOptions
from m7b.mirror.tracker import free_port, local_opentracker
from m7b.store import Store
from m7b.synth import synthesize

NAME = "mistral-demo"
PROMPT = "The magnet link was posted at"


@dataclass
class DemoStep:
    name: str
    ok: bool
    seconds: float
    summary: str
    detail: dict[str, Any] = field(default_factory=dict)


@contextmanager
def _serving(mirror: Mirror) -> Iterator[Mirror]:
    """Run a mirror's alert loop in a thread; wait until its checks finished."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            mirror.session.wait_for_alert(200)
            mirror.poll()

    thread = threading.Thread(target=loop, daemon=True)
    mirror.poll()
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not mirror.ready() and time.monotonic() < deadline:
            time.sleep(0.1)
        yield mirror
    finally:
        stop.set()
        thread.join(10)
        mirror.close()


def _m7b(home: Path, *args: str) -> dict[str, Any]:
    """Run an `m7b` command as a user would, against the user's store; return its JSON document."""
    proc = subprocess.run(
        [sys.executable, "-m", "m7b", *args, "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "M7B_HOME": str(home)},
    )
    lines = proc.stdout.strip().splitlines()
    doc = json.loads(lines[-1]) if lines else {}
    if proc.returncode != 0:
        raise MismatchError(f"`m7b {' '.join(args)}` exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return doc


def run_demo(work: Path, preset: str, report: Callable[[DemoStep], None]) -> list[DemoStep]:
    """Run every step in `work` (which must not exist or be empty); stop at the first failing step."""
    work = Path(work).resolve()
    if work.exists() and any(work.iterdir()):
        from m7b.errors import StorageError

        raise StorageError(f"demo folder {work} exists and is not empty: choose a new work folder", field="work")
    steps: list[DemoStep] = []
    user = Store(work / "user-home")
    publisher = Store(work / "publisher-home")

    def step(name: str, action: Callable[[], tuple[str, dict[str, Any]]]) -> None:
        start = time.monotonic()
        try:
            summary, detail = action()
        except M7bError as exc:
            steps.append(DemoStep(name, False, time.monotonic() - start, str(exc)))
            report(steps[-1])
            raise
        steps.append(DemoStep(name, True, time.monotonic() - start, summary, detail))
        report(steps[-1])

    folder = work / "publisher" / "Mistral-Demo"
    step(
        "synthesize",
        lambda: (
            f"{preset} release in {folder}",
            {"parameters": synthesize(folder, preset, seed=0).architecture.parameter_count()},
        ),
    )

    port = free_port()
    tracker = f"http://127.0.0.1:{port}/announce"
    made = create_release(
        folder, trackers=[tracker], manifest_name=NAME, title="Mistral demo (synthetic)", publisher="m7b demo"
    )
    write_bytes(folder.parent / f"{folder.name}.torrent", made.torrent)
    user.ensure_dir(user.manifests_dir)
    manifest_path = user.manifests_dir / f"{NAME}.toml"
    write_text(manifest_path, manifest_to_toml(made.manifest))
    steps.append(
        DemoStep(
            "publish",
            True,
            0.0,
            f"torrent {made.meta.info_hash}, {made.meta.num_pieces} pieces; manifest {manifest_path.name}",
            {"magnet": made.magnet},
        )
    )
    report(steps[-1])

    with local_opentracker(work / "tracker", [made.meta.info_hash], port=port):
        publisher_seed = open_mirror([str(folder)], store=publisher, options=SessionOptions.loopback())
        with _serving(publisher_seed):
            state = publisher_seed.poll()[0].state
            steps.append(
                DemoStep(
                    "seed (publisher)",
                    state == "seeding",
                    0.0,
                    f"publisher's m7b seed on port {publisher_seed.listen_port}: {state}",
                )
            )
            report(steps[-1])

            def fetch_step() -> tuple[str, dict[str, Any]]:
                result = fetch_release(NAME, store=user, options=SessionOptions.loopback(), timeout=60)
                return (
                    f"{result.total_size:,} bytes through the tracker in {result.seconds:.2f} s, every piece "
                    f"hash-checked",
                    {"downloaded_bytes": result.downloaded_bytes},
                )

            step("fetch", fetch_step)

        home = user.home
        step("verify", lambda: _summarise_verify(_m7b(home, "verify", NAME)))
        for layout in ("native", "hf"):

            def convert(layout: str = layout) -> tuple[str, dict[str, Any]]:
                summary = f"{layout} safetensors in {user.converted_dir(NAME, layout)}"
                return summary, _m7b(home, "convert", NAME, "--to", layout)

            step(f"convert {layout}", convert)
        step("run", lambda: _summarise_run(_m7b(home, "run", NAME, "--prompt", PROMPT, "--max-tokens", "24")))
        step("smoke", lambda: _summarise_smoke(_m7b(home, "smoke", NAME)))
        if shutil.which("aria2c"):
            step("serve back", lambda: _serve_back(user, work, made.magnet))
    return steps


def _summarise_verify(doc: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return f"verdict {doc.get('verdict')}: pieces, manifest hashes, license, checkpoint", doc


def _summarise_run(doc: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    figures = ", ".join(f"{k} {v}" for k, v in doc.items() if k.endswith(("_s", "tok_s")) and v is not None)
    return f"{len(doc.get('token_ids', []))} tokens generated ({figures}); random weights, so the text is noise", doc


def _summarise_smoke(doc: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    checks = doc.get("checks", [])
    return f"{'all' if doc.get('passed') else 'NOT all'} {len(checks)} smoke checks passed", doc


def _serve_back(user: Store, work: Path, magnet: str) -> tuple[str, dict[str, Any]]:
    """The user's own mirror serves the verified release; aria2c finds it through the tracker and downloads it."""
    mirror = open_mirror([NAME], store=user, options=SessionOptions.loopback())
    with _serving(mirror):
        status = mirror.poll()[0]
        if status.state != "seeding":
            raise MismatchError(f"the user's mirror refused the release: {status.reason}")
        out = work / "aria2c"
        proc = subprocess.run(
            [
                "aria2c",
                "--enable-dht=false",
                "--bt-enable-lpd=false",
                "--enable-peer-exchange=false",
                "--seed-time=0",
                "--summary-interval=0",
                "--console-log-level=warn",
                "--bt-stop-timeout=60",
                f"--dir={out}",
                magnet,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            raise MismatchError(f"aria2c could not download from the user's mirror: {proc.stdout[-300:]}")
    return (
        f"aria2c downloaded it from the user's m7b seed (trusted record: {status.trusted_record})",
        {"aria2c_dir": str(out)},
    )
