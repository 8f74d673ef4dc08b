"""Real swarm parts for tests on 127.0.0.x: plain libtorrent seeders (TCP, uTP only, IPv6), opentracker (HTTP and
UDP), a tracker that never answers, a private DHT of libtorrent nodes, HTTP servers for web seeds (one with Range,
one without, and Debian's nginx)."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import libtorrent as lt

from m7b.mirror.layout import renamed_files
from m7b.mirror.local_dht import PrivateDht, dht_state_nodes, private_dht
from m7b.mirror.session import SessionOptions, make_session, settings
from m7b.mirror.tracker import free_port, local_opentracker, silent_tracker
from m7b.torrent import load_torrent

__all__ = ["PrivateDht", "dht_state_nodes", "free_port", "local_opentracker", "private_dht", "silent_tracker"]


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
    torrent: Path,
    folder: Path,
    *,
    upload_limit: int = 0,
    trust_without_check: bool = False,
    tracker: str | None = None,
    host: str = "127.0.0.1",
    utp_only: bool = False,
    control: dict | None = None,
) -> Iterator[str]:
    """A plain libtorrent session seeding `folder` (the release files, renamed as m7b lays them out) on `host`.

    With `trust_without_check`, resume data claims every piece, so a corrupted copy is served as is. With
    `utp_only` it neither accepts nor makes TCP connections. `control` receives the session (to change its rate).
    Yields "HOST:PORT" (IPv6 in brackets).
    """
    ti, meta = load_torrent(torrent)
    where = f"[{host}]" if ":" in host else host
    options = SessionOptions.loopback(upload_limit=upload_limit, listen=f"{where}:0", utp=utp_only)
    if utp_only:
        pack = settings(options)
        pack.update(enable_incoming_tcp=False, enable_outgoing_tcp=False)
        session = lt.session(pack)
    else:
        session = make_session(options)
    if control is not None:
        control["session"] = session
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
        yield f"{where}:{session.listen_port()}"
    finally:
        session.pause()


def udp_announce(http_announce: str) -> str:
    """The UDP announce URL of the opentracker whose HTTP announce URL is given (it serves both on one port)."""
    return http_announce.replace("http://", "udp://", 1)


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


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
def _static_http_server(handler_class: type[http.server.SimpleHTTPRequestHandler], root: Path) -> Iterator[str]:
    """`handler_class` serving `root` on 127.0.0.1 from a thread. Yields its base URL."""
    handler = lambda *a, **k: handler_class(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def range_http_server(root: Path) -> contextlib.AbstractContextManager[str]:
    """An HTTP server with Range support serving `root` on 127.0.0.1. Yields its base URL."""
    return _static_http_server(_RangeHandler, root)


class _NoRangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files that ignore Range: 200 with the whole file to every GET (as `python -m http.server` does)."""

    def log_message(self, format: str, *args: object) -> None:
        pass


def no_range_http_server(root: Path) -> contextlib.AbstractContextManager[str]:
    """An HTTP server on 127.0.0.1 that ignores Range requests, serving `root`. Yields its base URL."""
    return _static_http_server(_NoRangeHandler, root)


_NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {run}/nginx.pid;
error_log {run}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {run}/access.log;
    client_body_temp_path {run}/body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location /broken/ {{ return 500; }}
    }}
}}
"""


@contextlib.contextmanager
def nginx_server(root: Path, run: Path) -> Iterator[str]:
    """Debian's nginx serving `root` on 127.0.0.1 (honours Range; every path under /broken/ answers 500), its
    config, pid file and logs in `run`. Yields its base URL; the caller skips when nginx is not installed."""
    binary = nginx_binary()
    assert binary, "nginx is not installed: `apt-get install nginx` (scripts/setup does it)"
    run.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = run / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(run=run, port=port, root=root))
    proc = subprocess.Popen([binary, "-p", str(run), "-e", str(run / "error.log"), "-c", str(conf)])
    try:
        assert wait_for(lambda: _listening(port) or proc.poll() is not None, 10), "nginx did not start"
        assert proc.poll() is None, (run / "error.log").read_text()
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(10)


def nginx_binary() -> str | None:
    """Debian installs nginx in /usr/sbin, which a normal user's PATH may lack."""
    return shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").is_file() else None)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
