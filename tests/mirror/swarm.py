"""Real swarm parts for tests on 127.0.0.1: plain libtorrent seeders, opentracker, an HTTP server with Range."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import libtorrent as lt

from m7b.mirror.layout import renamed_files
from m7b.mirror.session import SessionOptions, make_session
from m7b.mirror.tracker import free_port, local_opentracker
from m7b.torrent import load_torrent

__all__ = ["free_port", "local_opentracker"]


def tree_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def wait_for(predicate, timeout: float = 30.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


@contextlib.contextmanager
def plain_seeder(
    torrent: Path, folder: Path, *, upload_limit: int = 0, trust_without_check: bool = False, tracker: str | None = None
) -> Iterator[str]:
    """A plain libtorrent session seeding `folder` (the release files, renamed as m7b lays them out).

    With `trust_without_check`, resume data claims every piece, so a corrupted copy is served as is.
    Yields "127.0.0.1:PORT".
    """
    ti, meta = load_torrent(torrent)
    session = make_session(SessionOptions.loopback(upload_limit=upload_limit))
    atp = lt.add_torrent_params()
    atp.ti = ti
    atp.save_path = str(folder)
    atp.renamed_files = renamed_files(meta)
    if tracker:
        atp.trackers = [tracker]
    atp.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
    atp.flags |= lt.torrent_flags.upload_mode
    if trust_without_check:
        atp.have_pieces = [True] * meta.num_pieces
        atp.flags |= lt.torrent_flags.no_verify_files
    handle = session.add_torrent(atp)
    assert wait_for(lambda: handle.status().is_seeding), f"seeder did not start: {handle.status().state}"
    try:
        yield f"127.0.0.1:{session.listen_port()}"
    finally:
        session.pause()


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single-range GET support (what BEP 19 web seeds need)."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        path = Path(self.translate_path(self.path))
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if not path.is_file() or not match:
            return super().do_GET()
        size = path.stat().st_size
        start = int(match.group(1))
        end = min(int(match.group(2)) if match.group(2) else size - 1, size - 1)
        if start > end:
            self.send_error(416)
            return
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        with open(path, "rb") as fh:
            fh.seek(start)
            left = end - start + 1
            while left:
                chunk = fh.read(min(left, 1 << 20))
                self.wfile.write(chunk)
                left -= len(chunk)


@contextlib.contextmanager
def range_http_server(root: Path) -> Iterator[str]:
    """An HTTP server with Range support serving `root` on 127.0.0.1. Yields its base URL."""
    handler = lambda *a, **k: _RangeHandler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
