"""rtorrent (Debian's `rtorrent` package) run headless on loopback, for interop tests.

rtorrent keeps one peer per IP address, so on one machine it is bound to 127.0.0.2: a tracker then lists it apart
from an m7b peer on 127.0.0.1 (docs/clients.md). It needs a terminal even with no one watching, so it runs
under `script`, which gives it a pseudo-terminal. Its hooks touch marker files in its folder when a download's hash
check ends and when a download finishes, so a test can wait on those instead of scraping the screen.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ADDRESS = "127.0.0.2"


@dataclass(frozen=True)
class Rtorrent:
    address: str
    port: int
    folder: Path  # config, session, log and marker files

    @property
    def peer(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def hashed(self) -> Path:
        """Written once a download's hash check ends; holds d.complete (1 when every piece checked out)."""
        return self.folder / "hashed"

    @property
    def finished(self) -> Path:
        """Written when a download completes."""
        return self.folder / "finished"

    @property
    def log(self) -> Path:
        return self.folder / "rtorrent.log"

    def announced(self) -> bool:
        """Whether a tracker has answered rtorrent's announce (its log says `received N peers`)."""
        return "tracker_list: received" in self.log_text()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else "(no log)"


def rtorrent_binary() -> str | None:
    return shutil.which("rtorrent")


def _free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def _config(rt: Rtorrent, directory: Path, torrent: Path) -> str:
    return "\n".join(
        [
            f"directory.default.set = {directory}",
            f"session.path.set = {rt.folder / 'session'}",
            "session.use_lock.set = no",
            f"network.bind_address.set = {rt.address}",
            f"network.port_range.set = {rt.port}-{rt.port}",
            "network.port_random.set = no",
            "dht.mode.set = disable",
            "protocol.pex.set = no",
            "trackers.use_udp.set = no",
            "pieces.hash.on_completion.set = no",
            f'log.open_file = "main", "{rt.log}"',
            'log.add_output = "info", "main"',
            'log.add_output = "tracker_info", "main"',
            f'method.set_key = event.download.hash_done, m7b_hashed, "execute.nothrow = sh, -c, \\"echo $0 > '
            f'{rt.hashed}\\", (d.complete)"',
            f'method.set_key = event.download.finished, m7b_finished, "execute.nothrow = touch, {rt.finished}"',
            f'load.start = "{torrent}"',
            "",
        ]
    )


@contextlib.contextmanager
def running_rtorrent(torrent: Path, directory: Path, folder: Path, address: str = ADDRESS) -> Iterator[Rtorrent]:
    """rtorrent with `torrent` started, its data under `directory`/<torrent name>; stopped afterwards.

    A complete folder there is hash-checked and seeded; a missing one is downloaded. With DHT off, rtorrent 0.9.8
    never checks nor starts a torrent that names no tracker, so `torrent` must name one.
    """
    binary = rtorrent_binary()
    assert binary, "rtorrent is not installed (apt-get install rtorrent; scripts/setup does it)"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "session").mkdir(exist_ok=True)
    rt = Rtorrent(address, _free_port(address), folder)
    rc = folder / "rtorrent.rc"
    rc.write_text(_config(rt, directory, torrent))
    proc = subprocess.Popen(
        ["script", "-qfec", f"{binary} -n -o import={rc}", "/dev/null"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TERM": "xterm", "HOME": str(folder)},
    )
    try:
        yield rt
    finally:
        _stop(proc)


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _stop(script: subprocess.Popen) -> None:
    """Stop rtorrent (in its own session on the pseudo-terminal) and its `script` wrapper, by their ids."""
    pids = [*_children(script.pid), script.pid]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        try:
            script.wait(5)
        except subprocess.TimeoutExpired:
            continue
        if not any(Path(f"/proc/{pid}").exists() for pid in pids[:-1]):
            return
