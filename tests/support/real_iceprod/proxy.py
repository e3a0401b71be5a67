"""A recording HTTP proxy on 127.0.0.1, for watching what a client sends to the real server.

The real server accepts tokens up to 60 s past ``exp`` (rest_tools' leeway), so counting its
403s cannot show that a client used an expired token. The proxy sits between client and
server and records, for every request, the time it passed through and the bearer token's
``exp`` (read without verification), plus the upstream status::

    with RecordingProxy(api.url) as proxy:
        ... point the client at proxy.url ...
    assert not [r for r in proxy.records() if r.expired]
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from iceprod_exporter.source.auth import token_expiry
from iceprod_simulator.service import ServerThread, Service

# hop-by-hop headers (RFC 9110 7.6.1) are the proxy's own business, not forwarded
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


@dataclass(frozen=True)
class ProxiedRequest:
    """One request that went through the proxy."""

    at: float  # time.time() when the request arrived at the proxy
    method: str
    path: str
    token: str | None  # the bearer token, if any
    exp: float | None  # its exp claim (unverified), if it has one
    status: int  # the upstream status (502 if the upstream could not be reached)

    @property
    def expired(self) -> bool:
        """Whether the token had expired when the request passed through."""
        return self.exp is not None and self.at >= self.exp


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, proxy: RecordingProxy) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.proxy = proxy


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real server
    server: _Server

    def do_GET(self) -> None:
        self._forward()

    def do_HEAD(self) -> None:
        self._forward()

    def _forward(self) -> None:
        proxy = self.server.proxy
        at = time.time()
        kind, _, token = self.headers.get("Authorization", "").partition(" ")
        bearer = token if kind.lower() == "bearer" and token else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["Host"] = proxy.upstream_netloc
        try:
            conn = http.client.HTTPConnection(
                proxy.upstream_host, proxy.upstream_port, timeout=proxy.timeout
            )
            try:
                conn.request(self.command, self.path, headers=headers)
                response = conn.getresponse()
                status, reason = response.status, response.reason
                body = response.read()
                out_headers = [
                    (k, v)
                    for k, v in response.getheaders()
                    if k.lower() not in _HOP_BY_HOP | {"content-length"}
                ]
            finally:
                conn.close()
        except OSError as exc:
            status, reason, body = 502, "Bad Gateway", f"proxy: {exc}".encode()
            out_headers = [("Content-Type", "text/plain")]
        exp = token_expiry(bearer) if bearer else None
        proxy.record(ProxiedRequest(at, self.command, self.path, bearer, exp, status))
        self.send_response(status, reason)
        for name, value in out_headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the records are the log."""


class RecordingProxy(Service):
    """Forwards every request to ``upstream`` and records it (context manager)."""

    def __init__(self, upstream: str, timeout: float = 60.0) -> None:
        parts = urlsplit(upstream)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"upstream needs host and port: {upstream!r}")
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self.upstream_netloc = parts.netloc
        self.timeout = timeout
        self._lock = threading.Lock()
        self._records: list[ProxiedRequest] = []
        self._serving: ServerThread | None = None
        self._port = 0

    @property
    def url(self) -> str:
        """Base URL clients should use instead of the upstream's."""
        if self._serving is None:
            raise RuntimeError("proxy not started")
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> None:
        """Listen on an ephemeral 127.0.0.1 port, serving from a daemon thread."""
        server = _Server(self)
        self._port = server.server_address[1]
        self._serving = ServerThread(server)

    def stop(self) -> None:
        """Stop listening (open keep-alive connections die with their daemon threads)."""
        if self._serving is None:
            return
        self._serving.close(timeout=10)
        self._serving = None

    def record(self, request: ProxiedRequest) -> None:
        """Add one record (called by the handler threads)."""
        with self._lock:
            self._records.append(request)

    def records(self) -> list[ProxiedRequest]:
        """Every request so far, in arrival order of their answers."""
        with self._lock:
            return list(self._records)
