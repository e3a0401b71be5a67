"""A real HTTP server on 127.0.0.1 whose answers a test scripts per path, hostile ones too."""

from __future__ import annotations

import json
import select
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from iceprod_simulator.service import ServerThread, Service


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    raw: bytes | None = None
    drip: float = 0.0  # seconds between the body's bytes (the headers go at once)
    stall: bool = False  # the headers, then nothing until the client goes
    chunks: Callable[[], Iterator[bytes]] | None = None  # a chunked body, maybe endless
    length: int | None = None  # the Content-Length announced, if not the body's
    hang_up: bool = False  # close the connection after the answer, without saying so


#: longest a stalled answer waits for its client to go (every handler ends by itself)
STALL_MAX = 60.0


@dataclass
class Seen:
    path: str
    authorization: str | None
    method: str = "GET"
    body: bytes = b""


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # clients connect at once (the default, 5, drops SYNs: 1 s stalls)


class ScriptedServer(Service):
    """Each path maps to a list of replies used in turn (the last one repeats).

    A key ending in ``*`` scripts every path it begins (the longest such key wins). A path not
    scripted is answered 404, or, with ``upstream`` set, passed on to it (a hostile IceProd
    is then a real one with a few routes turned).
    """

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.script: dict[str, list[Reply]] = {}
        self.seen: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.hung_up = 0  # answers the client abandoned
        self.connections = 0  # TCP connections accepted
        self.upstream: str | None = None
        self._lock = threading.Lock()
        self.on_request: Callable[[str], None] = lambda path: None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with outer._lock:
                    outer.connections += 1

            def do_GET(self) -> None:
                outer._handle(self)

            def do_POST(self) -> None:
                outer._handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.scheme = "http"
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.httpd.daemon_threads = True
        self._serving: ServerThread | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> None:
        """Serve from a daemon thread (the port is bound from the start)."""
        self._serving = ServerThread(self.httpd)

    def stop(self) -> None:
        """Stop serving and close the port."""
        if self._serving is not None:
            self._serving.close()
            self._serving = None

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        path = request.path.split("?")[0]
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        with self._lock:
            self.seen.append(
                Seen(request.path, request.headers.get("Authorization"), request.command, body)
            )
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            replies = self._replies(path)
            reply = None if replies is None else replies.pop(0) if len(replies) > 1 else replies[0]
        try:
            self.on_request(path)
            if reply is None:
                assert self.upstream is not None
                reply = _relayed(request, self.upstream)
            time.sleep(reply.delay)
            _answer(request, reply)
            request.close_connection = request.close_connection or reply.hang_up
        except (BrokenPipeError, ConnectionResetError):
            with self._lock:
                self.hung_up += 1
            request.close_connection = True
        finally:
            with self._lock:
                self.in_flight -= 1

    def _replies(self, path: str) -> list[Reply] | None:
        """The script for ``path``; None to relay it upstream."""
        if path in self.script:
            return self.script[path]
        prefixes = [k for k in self.script if k.endswith("*") and path.startswith(k[:-1])]
        if prefixes:
            return self.script[max(prefixes, key=len)]
        if self.upstream is not None:
            return None
        return [Reply(404, {"code": 404, "error": "not found"})]


def threads_outside_servers() -> int:
    """Live threads of this process, leaving out the servers' handlers (they end on their own)."""
    return sum("process_request_thread" not in t.name for t in threading.enumerate())


def _relayed(request: BaseHTTPRequestHandler, upstream: str) -> Reply:
    forward = urllib.request.Request(upstream + request.path, headers=dict(request.headers))
    try:
        with urllib.request.urlopen(forward, timeout=30) as answer:
            return Reply(answer.status, raw=answer.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, raw=exc.read())


def _answer(request: BaseHTTPRequestHandler, reply: Reply) -> None:
    request.send_response(reply.status)
    for key, value in reply.headers.items():
        request.send_header(key, value)
    if reply.chunks is not None:
        request.send_header("Transfer-Encoding", "chunked")
        request.end_headers()
        for chunk in reply.chunks():
            request.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        request.wfile.write(b"0\r\n\r\n")
        return
    data = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
    request.send_header("Content-Length", str(reply.length or len(data)))
    request.end_headers()
    if reply.stall:
        request.wfile.flush()
        _wait_for_hang_up(request.connection)
    elif reply.drip:
        for i in range(len(data)):
            request.wfile.write(data[i : i + 1])
            request.wfile.flush()
            time.sleep(reply.drip)
    else:
        request.wfile.write(data)


def _wait_for_hang_up(conn: socket.socket) -> None:
    ends = time.monotonic() + STALL_MAX
    while time.monotonic() < ends:
        readable, _, _ = select.select([conn], [], [], 0.05)
        if readable and not conn.recv(1, socket.MSG_PEEK):
            raise ConnectionResetError("the client hung up")


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    """A scripted IceProd on 127.0.0.1 for one test."""
    with ScriptedServer() as s:
        yield s
