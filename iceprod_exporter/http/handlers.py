"""The request handlers: ``/metrics``, ``/healthz``, ``/readyz``, the landing page and 404.

Every handler reads in-memory state only: ``/metrics`` is the server's own counters rendered
now, then the bytes of a :class:`MetricsSource` (the exporter's self-metrics and the snapshot,
encoded once per poll). Before answering, a handler checks the client certificate's names and
the basic-auth login the web configuration asks for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from tornado.ioloop import IOLoop
from tornado.web import Application, HTTPError, RequestHandler

from iceprod_exporter import __version__
from iceprod_exporter.exposition.formats import CONTENT_TYPES, Format, OwnMetricsPart
from iceprod_exporter.exposition.telemetry import HttpTelemetry
from iceprod_exporter.http import landing
from iceprod_exporter.http.logins import LoginChecks, basic_credentials
from iceprod_exporter.http.negotiation import accepts_gzip, negotiate
from iceprod_exporter.http.web_config import LiveWebConfig, WebConfig
from iceprod_exporter.model.status import Status

log = structlog.get_logger(__name__)

REALM = "iceprod-exporter"
ALLOW = "GET, HEAD"
#: headers an error answer carries, by status
_ERROR_HEADERS = {
    405: ("Allow", ALLOW),
    401: ("WWW-Authenticate", f'Basic realm="{REALM}"'),
    503: ("Retry-After", "1"),
}


class MetricsSource(Protocol):
    """What /metrics serves after the server's own counters."""

    def has_snapshot(self) -> bool:
        """Whether :meth:`chunks` answers without waiting or encoding anything."""

    def wait_for_snapshot(self) -> None:
        """Make :meth:`chunks` ready (blocking; called in a worker thread)."""

    def chunks(self, fmt: Format, gzipped: bool = False) -> Sequence[bytes]:
        """The bytes in one format and encoding (OpenMetrics ending with ``# EOF``), in pieces."""


class NotReady(Exception):
    """The source has nothing to serve yet (the serving process awaits its first snapshot)."""


@dataclass
class HandlerContext:
    """What every handler reads: the source, the status, the web configuration, the counters."""

    source: MetricsSource
    own: OwnMetricsPart  # the server's own counters
    status: Callable[[], Status]
    web: LiveWebConfig
    telemetry: HttpTelemetry
    render_pool: ThreadPoolExecutor
    checks: LoginChecks
    in_flight: int = 0

    def chunks(self, fmt: Format, gzipped: bool) -> Sequence[bytes]:
        """/metrics bytes: the server's counters, then the source."""
        return (self.own(fmt, gzipped), *self.source.chunks(fmt, gzipped))

    def body(self, fmt: Format) -> bytes:
        """/metrics bytes without compression, joined."""
        return b"".join(self.chunks(fmt, False))


def application(context: HandlerContext) -> Application:
    """The Tornado application: the routes, each handler reading ``context``."""
    return Application(
        [
            (r"/metrics", _Metrics, {"context": context}),
            (r"/healthz", _Healthz, {"context": context}),
            (r"/readyz", _Readyz, {"context": context}),
            (r"/", _Landing, {"context": context}),
        ],
        default_handler_class=_NotFound,
        default_handler_args={"context": context},
        log_function=_access_log,
        compress_response=False,  # gzip is made once per snapshot, not per response
    )


def _access_log(handler: RequestHandler) -> None:
    log.debug(
        "http.request",
        method=handler.request.method,
        path=handler.request.path[:200],
        code=handler.get_status(),
        ms=round(1000 * handler.request.request_time(), 2),
    )


class _Handler(RequestHandler):
    SUPPORTED_METHODS = ("GET", "HEAD")
    handler_label = "other"
    public = False

    context: HandlerContext

    def initialize(self, context: HandlerContext) -> None:
        self.context = context
        self.set_default_headers()  # Tornado's __init__ called it before the context was set

    def set_default_headers(self) -> None:
        self.clear_header("Server")  # no version advertised
        context = getattr(self, "context", None)
        if context is not None:
            for name, value in context.web.config.headers.items():
                self.set_header(name, value)

    async def prepare(self) -> None:
        self.context.in_flight += 1
        self._counted = True
        config = self.context.web.config
        self._check_client_certificate(config)
        if not self.public and config.users:
            await self._check_login(config)

    def _check_client_certificate(self, config: WebConfig) -> None:
        """403 unless the client certificate has one of the allowed names (when any are set)."""
        if config.tls is None or not config.tls.client_allowed_sans:
            return
        sock = self.request.connection.stream.socket  # type: ignore[union-attr]
        peer = sock.getpeercert() if hasattr(sock, "getpeercert") else None
        if not config.tls.allowed_peer(peer):
            raise HTTPError(403)

    async def _check_login(self, config: WebConfig) -> None:
        """401 unless the request's basic-auth login is good; 503 when it could not be checked."""
        credentials = basic_credentials(self.request.headers.get("Authorization"))
        ok: bool | None = False
        if credentials is not None:
            stream = self.request.connection.stream  # type: ignore[union-attr]
            # bcrypt off the IOLoop, one at a time: a flood of wrong passwords costs one core
            # at most and never delays a scrape
            login = (config.users, *credentials)
            peer = self.request.remote_ip or ""
            ok = await self.context.checks.check(login, peer, stream.closed)
        if ok is None:
            raise HTTPError(503)  # too many logins waiting (or the client has gone)
        if not ok:
            self.context.telemetry.auth_failures.inc()
            log.debug("http.auth_failed", path=self.request.path)  # never user or password
            raise HTTPError(401)

    def on_finish(self) -> None:
        if getattr(self, "_counted", False):
            self.context.in_flight -= 1
        self.context.telemetry.requests.labels(self.handler_label, str(self.get_status())).inc()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code in _ERROR_HEADERS:
            self.set_header(*_ERROR_HEADERS[status_code])
        self._send(f"{status_code} {self._reason}\n".encode())

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, HTTPError):
            return  # a client's doing, already answered
        log.error("http.handler_failed", path=self.request.path, error=repr(value))

    def _send(
        self, body: bytes | Sequence[bytes], content_type: str = "text/plain; charset=utf-8"
    ) -> None:
        chunks = (body,) if isinstance(body, bytes) else body
        self.set_header("Content-Type", content_type)
        self.set_header("Content-Length", str(sum(len(c) for c in chunks)))
        if self.request.method != "HEAD":
            # one write: flushed part by part, TCP held back each body's tail (p99 12 ms, not 5)
            self.write(b"".join(chunks))
        self.finish()

    def head(self, *args: Any) -> Any:
        return self.get(*args)


class _Metrics(_Handler):
    handler_label = "/metrics"

    async def get(self) -> None:
        source = self.context.source
        if not source.has_snapshot():
            # not encoded by the poller (tests) or not received yet (a serving process just
            # started): wait in a worker, so the IOLoop keeps serving other clients meanwhile
            try:
                await IOLoop.current().run_in_executor(
                    self.context.render_pool, source.wait_for_snapshot
                )
            except NotReady as exc:
                self.set_status(503)
                self._send(f"{exc}\n".encode())
                return
        fmt = negotiate(self.request.headers.get("Accept", ""))
        gzipped = accepts_gzip(self.request.headers.get("Accept-Encoding", ""))
        body: bytes | Sequence[bytes]
        if gzipped:
            body = self.context.chunks(fmt, gzipped)
        else:  # decompressed in a worker: zlib lets go of the interpreter lock, the IOLoop goes on
            body = await IOLoop.current().run_in_executor(
                self.context.render_pool, self.context.body, fmt
            )
        self.set_header("Vary", "Accept, Accept-Encoding")
        if gzipped:
            self.set_header("Content-Encoding", "gzip")
        self._send(body, CONTENT_TYPES[fmt])


class _Healthz(_Handler):
    handler_label = "/healthz"
    public = True  # no basic auth: Kubernetes probes cannot easily send credentials

    def get(self) -> None:
        s = self.context.status()
        self.set_status(200 if s.live else 503)
        self._send(f"{s.live_reason}\n".encode())


class _Readyz(_Handler):
    handler_label = "/readyz"
    public = True  # as /healthz

    def get(self) -> None:
        s = self.context.status()
        self.set_status(200 if s.ready else 503)
        self._send(f"{s.ready_reason}\n".encode())


class _Landing(_Handler):
    handler_label = "/"

    def get(self) -> None:
        s = self.context.status()
        page = landing.render(
            __version__, s.live, s.live_reason, s.ready, s.ready_reason, s.details
        )
        self._send(page.encode(), "text/html; charset=utf-8")


class _NotFound(_Handler):
    public = True  # says nothing a scanner could use

    def get(self, *args: Any) -> None:
        self.set_status(404)
        self._send(b"not found: try /metrics\n")
