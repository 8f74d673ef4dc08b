"""The HTTP server behind `m7b seed --status`: one thread and a bounded number of descriptors, whatever clients do.

The seed's swarm needs descriptors and threads; the status page must never take them. So the server is one asyncio
loop in one daemon thread (no thread per connection), with:
- a connection cap (`ServerLimits.max_connections`): at the cap, the connection that has waited longest for its
  request is dropped to make room, so idle clients cannot lock an operator out, and never hold more than the cap;
- a deadline for the whole request (`request_seconds`: request line and headers) and for sending the answer
  (`send_seconds`): a client that connects and says nothing, or reads nothing, is closed;
- a cap on the request's size (`max_request_bytes`): a longer request line or header block is answered 431;
- GET and HEAD; every answer closes its connection. A client that goes away early is not an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from dataclasses import dataclass

from m7b.errors import NetworkError

from .status import PAGES, StatusBoard, parse_status_address, status_registry

STATUS_TEXT = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 431: "Too Large"}


@dataclass(frozen=True)
class ServerLimits:
    max_connections: int = 64
    request_seconds: float = 5.0
    send_seconds: float = 10.0
    max_request_bytes: int = 8192


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes


def _request_target(head: bytes) -> tuple[str, str] | None:
    """(method, path) from a request's head, or None when its request line is not HTTP."""
    line = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return None
    try:
        return parts[0].decode("ascii"), parts[1].decode("ascii").split("?", 1)[0]
    except UnicodeDecodeError:
        return None


class StatusServer:
    """The status endpoints for one board, served from one daemon thread until `close()`."""

    def __init__(self, board: StatusBoard, host: str, port: int, limits: ServerLimits | None = None) -> None:
        self.board = board
        self.limits = limits or ServerLimits()
        self._registry = status_registry(board)
        self._pending: dict[asyncio.StreamWriter, float] = {}  # connections still waiting for their request
        self._open: set[asyncio.StreamWriter] = set()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.bind((host, port))
            self._socket.listen(128)
        except OSError as exc:
            self._socket.close()
            raise NetworkError(
                f"cannot serve the status page on {host}:{port}: {exc.strerror or exc}; "
                "choose another address or port (port 0 picks a free one)"
            ) from exc
        self._socket.setblocking(False)
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="m7b-status", daemon=True)
        self._thread.start()
        self._started.wait(10)

    # the pages -----------------------------------------------------------------------------------------------

    def answer(self, method: str, path: str) -> Answer:
        if method not in ("GET", "HEAD"):
            return Answer(405, "text/plain; charset=utf-8", b"only GET and HEAD are served\n")
        page = PAGES.get(path)
        if page is None:
            return Answer(404, "text/plain; charset=utf-8", b"not found: try /, /status.json or /metrics\n")
        body, kind = page(self.board, self._registry)
        return Answer(200, kind, body)

    # the loop ------------------------------------------------------------------------------------------------

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._connection, sock=self._socket, limit=self.limits.max_request_bytes)
        )
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            for writer in list(self._open):
                writer.transport.abort()
            self._loop.run_until_complete(self._server.wait_closed())
            self._loop.close()

    def _make_room(self) -> None:
        """At the cap, drop the connection that has waited longest for its request (or, if every connection is
        being answered, the newest one: the caller's own)."""
        while len(self._open) > self.limits.max_connections and self._pending:
            oldest = min(self._pending, key=self._pending.__getitem__)
            self._pending.pop(oldest)
            self._open.discard(oldest)
            oldest.transport.abort()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        self._pending[writer] = self._loop.time()
        self._make_room()
        if writer not in self._open:
            return
        try:
            head = await asyncio.wait_for(self._read_head(reader), self.limits.request_seconds)
            self._pending.pop(writer, None)
            answer = self._respond(head)
            writer.write(answer)
            await asyncio.wait_for(writer.drain(), self.limits.send_seconds)
        except (TimeoutError, ConnectionError, OSError, asyncio.IncompleteReadError):
            pass  # a silent, slow or vanished client: closed below, nothing to report
        finally:
            self._pending.pop(writer, None)
            self._open.discard(writer)
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # the client stopped reading: drop what it did not take
            else:
                writer.close()

    async def _read_head(self, reader: asyncio.StreamReader) -> bytes | None:
        """The request line and headers, or None when they exceed the size cap."""
        try:
            return await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            return None

    def _respond(self, head: bytes | None) -> bytes:
        if head is None or len(head) > self.limits.max_request_bytes:
            answer, method = Answer(431, "text/plain; charset=utf-8", b"request too large\n"), "GET"
        elif (target := _request_target(head)) is None:
            answer, method = Answer(400, "text/plain; charset=utf-8", b"not an HTTP request\n"), "GET"
        else:
            method, path = target
            answer = self.answer(method, path)
        headers = (
            f"HTTP/1.1 {answer.status} {STATUS_TEXT.get(answer.status, '')}\r\n"
            f"Content-Type: {answer.content_type}\r\nContent-Length: {len(answer.body)}\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
        )
        return headers.encode("ascii") + (b"" if method == "HEAD" else answer.body)

    # the operator's side -------------------------------------------------------------------------------------

    @property
    def connections(self) -> int:
        """Connections open now (at most `limits.max_connections`)."""
        return len(self._open)

    @property
    def host(self) -> str:
        return str(self._socket.getsockname()[0])

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def close(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        with contextlib.suppress(OSError):
            self._socket.close()

    def __enter__(self) -> StatusServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_status_server(board: StatusBoard, address: str | None) -> StatusServer | None:
    """A running server on ADDRESS (HOST:PORT), or None when no address is given."""
    return StatusServer(board, *parse_status_address(address)) if address else None
