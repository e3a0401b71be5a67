"""A real HTTP server on 127.0.0.1 whose answers a test scripts per path."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from iceprod_exporter.simulator.service import ServerThread, Service


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    raw: bytes | None = None


@dataclass
class Seen:
    path: str
    authorization: str | None


class ScriptedServer(Service):
    """Each path maps to a list of replies used in turn (the last one repeats)."""

    def __init__(self) -> None:
        self.script: dict[str, list[Reply]] = {}
        self.seen: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self.on_request: Callable[[str], None] = lambda path: None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                outer._handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self._serving: ServerThread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

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
        with self._lock:
            self.seen.append(Seen(request.path, request.headers.get("Authorization")))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            replies = self.script.get(path, [Reply(404, {"code": 404, "error": "not found"})])
            reply = replies.pop(0) if len(replies) > 1 else replies[0]
        try:
            self.on_request(path)
            time.sleep(reply.delay)
            data = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
            request.send_response(reply.status)
            for key, value in reply.headers.items():
                request.send_header(key, value)
            request.send_header("Content-Length", str(len(data)))
            request.end_headers()
            request.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with self._lock:
                self.in_flight -= 1
