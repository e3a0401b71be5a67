"""HTTP: ``/metrics``, ``/healthz``, ``/readyz`` and a landing page, on a threaded WSGI server.

Every handler reads in-memory state only, so scrapes never wait on IceProd or the issuer.
"""

from __future__ import annotations

import gzip
import html
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from . import __version__
from .collector import RenderedSnapshot

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Status:
    """What the health endpoints and the landing page report."""

    live: bool
    live_reason: str
    ready: bool
    ready_reason: str
    details: Mapping[str, Any] = field(default_factory=dict)


def _text(start: StartResponse, code: str, body: str, kind: str = "text/plain") -> list[bytes]:
    data = body.encode()
    start(code, [("Content-Type", f"{kind}; charset=utf-8"), ("Content-Length", str(len(data)))])
    return [data]


def _landing(status: Status) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td><code>{html.escape(_show(v))}</code></td></tr>"
        for k, v in status.details.items()
    )
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>IceProd exporter</title>
<style>body{{font-family:sans-serif;margin:2em}}th{{text-align:left;padding-right:1em;
vertical-align:top}}td code{{white-space:pre-wrap}}</style></head>
<body><h1>IceProd exporter</h1>
<p>Version {html.escape(__version__)}.
Liveness: {html.escape(status.live_reason)}. Readiness: {html.escape(status.ready_reason)}.</p>
<ul><li><a href="metrics">/metrics</a></li><li><a href="healthz">/healthz</a></li>
<li><a href="readyz">/readyz</a></li></ul>
<table>{rows}</table></body></html>
"""


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, indent=1, sort_keys=True)


def render_metrics(
    registry: CollectorRegistry, snapshot: RenderedSnapshot, accept: str = ""
) -> tuple[bytes, str]:
    """The exposition in the negotiated format: live self-metrics, then the cached snapshot."""
    encoder, content_type = choose_encoder(accept)
    live = encoder(registry)
    if content_type.startswith("application/openmetrics-text"):
        live = live.removesuffix(b"# EOF\n")  # the snapshot part carries the one EOF
    return live + snapshot.render(encoder, content_type), content_type


def make_app(
    registry: CollectorRegistry, snapshot: RenderedSnapshot, status: Callable[[], Status]
) -> WSGIApplication:
    """The exporter's WSGI application."""

    def metrics(environ: WSGIEnvironment, start: StartResponse) -> list[bytes]:
        body, content_type = render_metrics(registry, snapshot, environ.get("HTTP_ACCEPT", ""))
        headers = [("Content-Type", content_type)]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            body = gzip.compress(body, compresslevel=1)  # fast: scrapes are frequent
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Content-Length", str(len(body))))
        start("200 OK", headers)
        return [body]

    def app(environ: WSGIEnvironment, start: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return metrics(environ, start)
        if path == "/healthz":
            s = status()
            return _text(start, "200 OK" if s.live else "503 Service Unavailable", s.live_reason)
        if path == "/readyz":
            s = status()
            return _text(start, "200 OK" if s.ready else "503 Service Unavailable", s.ready_reason)
        if path == "/":
            return _text(start, "200 OK", _landing(status()), "text/html")
        return _text(start, "404 Not Found", "not found: try /metrics\n")

    return app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http.request", line=format % args)


class HttpServer:
    """Serves a WSGI app from a background thread, so scrapes never share the poller's loop."""

    def __init__(self, app: WSGIApplication, address: str, port: int) -> None:
        self._httpd = make_server(
            address, port, app, server_class=_Server, handler_class=_QuietHandler
        )
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        """Start serving."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()
