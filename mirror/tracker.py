"""Trackers on 127.0.0.1 for local swarms (demos, tests, benchmarks): Debian's opentracker (HTTP and UDP on one
port), and a dead one that accepts and never answers.

Debian's build serves only whitelisted info-hashes. Run as root it chroots into its folder and drops to
`nobody`, so the whitelist path is then relative to that folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from m7b.atomic import write_text
from m7b.errors import NetworkError, NotFoundError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def local_opentracker(folder: Path, info_hashes: Sequence[str], port: int = 0) -> Iterator[str]:
    """Run opentracker on 127.0.0.1 for `info_hashes`; yield its HTTP announce URL, stop it afterwards."""
    binary = shutil.which("opentracker")
    if binary is None:
        raise NotFoundError("opentracker is not installed: `apt-get install opentracker` (scripts/setup does it)")
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    whitelist = folder / "whitelist"
    write_text(whitelist, "".join(f"{h}\n" for h in info_hashes))
    whitelist.chmod(0o644)
    port = port or free_port()
    args = [binary, "-i", "127.0.0.1", "-p", str(port), "-P", str(port)]
    if os.geteuid() == 0:
        args += ["-w", whitelist.name, "-u", "nobody", "-d", str(folder)]
    else:
        args += ["-w", str(whitelist)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not _listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise NetworkError(f"opentracker did not start on 127.0.0.1:{port} (exit code {proc.poll()})")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/announce"
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def silent_tracker() -> Iterator[str]:
    """A tracker that is dead in the worst way: it accepts every connection and never answers. Yields its URL."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/announce"
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()
