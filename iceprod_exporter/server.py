"""HTTP: ``/metrics``, ``/healthz``, ``/readyz`` and a landing page, on Tornado.

Tornado runs on its own IOLoop in a dedicated thread. Every handler reads in-memory state only:
``/metrics`` is the server's own counters rendered now, then the bytes of a
:class:`MetricsSource` (the exporter's self-metrics and the snapshot, prepared once per poll).
The daemon runs this server in a process of its own (:mod:`~iceprod_exporter.serving`), so
scrapes never compete with polling for the interpreter.
Misbehaving clients are bounded: a connection cap, header/idle/body timeouts, a header size limit,
tiny bodies only; none of them gets a traceback into the log.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import logging
import resource
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from prometheus_client import CollectorRegistry
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.iostream import IOStream
from tornado.netutil import bind_sockets
from tornado.web import Application, HTTPError, RequestHandler

from . import __version__, landing
from .collector import CONTENT_TYPES, Format, LivePart
from .telemetry import HttpTelemetry
from .web_config import RELOAD_SECONDS, Authenticator, LiveWebConfig

log = structlog.get_logger(__name__)

#: connections served at once; more are closed at once (the file-descriptor limit is raised to fit)
MAX_CONNECTIONS = 1000
#: listen backlog: a burst of Prometheus replicas and dashboards reconnecting at once
BACKLOG = 1024
#: Tornado uses one timeout for "headers of the next request", which is both the keep-alive idle
#: time and the slow-header (slowloris) limit; above the common 60 s scrape interval so
#: Prometheus keeps its connection
IDLE_TIMEOUT = 65.0
#: GET and HEAD carry no body: a few KiB, read within a few seconds
BODY_TIMEOUT = 10.0
MAX_BODY_SIZE = 4096
MAX_HEADER_SIZE = 16 * 1024
#: how long ``stop`` waits for in-flight requests
SHUTDOWN_GRACE = 5.0
#: file descriptors kept free for the poller's sockets, logs and config files
_FD_RESERVE = 128
REALM = "iceprod-exporter"
ALLOW = "GET, HEAD"


@dataclass(frozen=True)
class Status:
    """What the health endpoints and the landing page report."""

    live: bool
    live_reason: str
    ready: bool
    ready_reason: str
    details: Mapping[str, Any] = field(default_factory=dict)


class BindError(Exception):
    """The server cannot listen; ``setting`` is the one at fault (listen_address or port)."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting
        self.message = message


# --------------------------------------------------------------------------- negotiation


def _params(item: str) -> tuple[str, dict[str, str]]:
    value, *rest = item.split(";")
    params = {}
    for p in rest:
        key, sep, val = p.partition("=")
        if sep:
            params[key.strip().lower()] = val.strip().strip('"')
    return value.strip().lower(), params


def _q(params: Mapping[str, str]) -> float:
    try:
        q = float(params.get("q", "1"))
    except ValueError:
        return 0.0
    return q if 0.0 <= q <= 1.0 else 0.0


def negotiate(accept: str) -> Format:
    """The format for an Accept header: OpenMetrics when preferred and understood, else text.

    Anything odd (unknown versions, malformed parameters, garbage) falls back to the text format,
    which every Prometheus reads.
    """
    best: tuple[float, int, Format] | None = None
    for position, item in enumerate(accept.split(",")[:32]):
        media, params = _params(item)
        q = _q(params)
        if q <= 0:
            continue
        if media == "application/openmetrics-text":
            if params.get("version", "1.0.0") not in ("0.0.1", "1.0.0"):
                continue
            fmt = Format.OPENMETRICS
        elif media in ("text/plain", "text/*", "*/*"):
            fmt = Format.TEXT
        else:
            continue
        candidate = (q, -position, fmt)
        if best is None or candidate[:2] > best[:2]:
            best = candidate
    return best[2] if best else Format.TEXT


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether the client takes gzip, honouring q-values (``gzip;q=0`` means no)."""
    star: float | None = None
    for item in accept_encoding.split(",")[:32]:
        coding, params = _params(item)
        if coding in ("gzip", "x-gzip"):
            return _q(params) > 0
        if coding == "*":
            star = _q(params)
    return bool(star and star > 0)


class MetricsSource(Protocol):
    """What /metrics serves after the server's own counters."""

    def is_prepared(self) -> bool:
        """Whether :meth:`body` answers without encoding anything."""

    def prepare(self) -> None:
        """Make :meth:`body` ready (blocking; called in a worker thread)."""

    def chunks(self, fmt: Format, gzipped: bool = False) -> Sequence[bytes]:
        """The bytes in one format and encoding (OpenMetrics ending with ``# EOF``), in pieces."""


class NotReady(Exception):
    """The source has nothing to serve yet (the serving process awaits its first snapshot)."""


# --------------------------------------------------------------------------- handlers


@dataclass
class _Context:
    source: MetricsSource
    own: LivePart  # the server's own counters
    status: Callable[[], Status]
    web: LiveWebConfig
    auth: Authenticator
    telemetry: HttpTelemetry
    render_pool: ThreadPoolExecutor
    bcrypt_pool: ThreadPoolExecutor
    in_flight: int = 0

    def chunks(self, fmt: Format, gzipped: bool) -> Sequence[bytes]:
        """/metrics bytes: the server's counters, then the source."""
        return (self.own(fmt, gzipped), *self.source.chunks(fmt, gzipped))

    def body(self, fmt: Format) -> bytes:
        """/metrics bytes without compression, joined."""
        return b"".join(self.chunks(fmt, False))


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or len(encoded) > 4096:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class _Handler(RequestHandler):
    SUPPORTED_METHODS = ("GET", "HEAD")
    handler_label = "other"
    public = False

    context: _Context

    def initialize(self, context: _Context) -> None:
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
        if config.tls is not None and config.tls.client_allowed_sans:
            stream = self.request.connection.stream  # type: ignore[union-attr]
            sock = stream.socket
            peer = sock.getpeercert() if hasattr(sock, "getpeercert") else None
            if not config.tls.allowed_peer(peer):
                raise HTTPError(403)
        if self.public or not config.users:
            return
        credentials = _basic_credentials(self.request.headers.get("Authorization"))
        ok = False
        if credentials is not None:
            user, password = credentials
            ok = self.context.auth.cached(config.users, user, password) or (
                # bcrypt off the IOLoop and one at a time: a flood of wrong passwords costs
                # one core and never delays a scrape
                await IOLoop.current().run_in_executor(
                    self.context.bcrypt_pool, self.context.auth.check, config.users, user, password
                )
            )
        if not ok:
            self.context.telemetry.auth_failures.inc()
            log.debug("http.auth_failed", path=self.request.path)  # never user or password
            raise HTTPError(401)

    def on_finish(self) -> None:
        if getattr(self, "_counted", False):
            self.context.in_flight -= 1
        self.context.telemetry.requests.labels(self.handler_label, str(self.get_status())).inc()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 405:
            self.set_header("Allow", ALLOW)
        if status_code == 401:
            self.set_header("WWW-Authenticate", f'Basic realm="{REALM}"')
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
        if not source.is_prepared():
            # not prepared by the poller (tests) or not received yet (a serving process just
            # started): wait in a worker, so the IOLoop keeps serving other clients meanwhile
            try:
                await IOLoop.current().run_in_executor(self.context.render_pool, source.prepare)
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


# --------------------------------------------------------------------------- server


class _CappedServer(HTTPServer):
    """Closes connections over the cap at once instead of queueing them."""

    max_connections = MAX_CONNECTIONS

    def handle_stream(self, stream: IOStream, address: tuple[Any, ...]) -> None:
        if len(self._connections) >= self.max_connections:
            stream.close()
            return
        super().handle_stream(stream, address)


class _ToStructlog(logging.Handler):
    """Tornado's own log records as one structlog line each, never with a traceback."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage().splitlines()[0] if record.msg else ""
        if record.exc_info and record.exc_info[1] is not None:
            message += f": {record.exc_info[1]!r}"
        log.debug("http.tornado", logger=record.name, message=message)


def _quiet_tornado() -> None:
    for name in ("tornado.access", "tornado.application", "tornado.general"):
        logger = logging.getLogger(name)
        logger.propagate = False
        logger.handlers = [_ToStructlog()]
        logger.setLevel(logging.DEBUG)


def _access_log(handler: RequestHandler) -> None:
    log.debug(
        "http.request",
        method=handler.request.method,
        path=handler.request.path[:200],
        code=handler.get_status(),
        ms=round(1000 * handler.request.request_time(), 2),
    )


def listen_host(address: str) -> str | None:
    """The host to bind for ``listen_address``; ``None`` binds every IPv4 and IPv6 address."""
    host = address.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return None if host in ("", "::", "*") else host


def bind(address: str, port: int, backlog: int = BACKLOG) -> list[socket.socket]:
    """Listening sockets for ``address``: IPv4, IPv6, dual stack (``::``) or a host name."""
    host = listen_host(address)
    try:
        return bind_sockets(port, host, backlog=backlog, reuse_port=False)
    except socket.gaierror as exc:
        raise BindError("listen_address", f"cannot resolve {address!r}: {exc.strerror}") from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise BindError("port", f"port {port} is already in use on {address}") from None
        if exc.errno == errno.EACCES:
            raise BindError(
                "port", f"no permission to listen on port {port} (below 1024 needs privileges)"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise BindError(
                "listen_address", f"{address} is not an address of this machine"
            ) from None
        raise BindError("listen_address", f"cannot listen on {address}:{port}: {exc}") from None


def _fit_fd_limit(connections: int) -> int:
    """Raise the soft open-file limit toward the cap; return the cap that fits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + _FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < want:
        fitted = max(16, soft - _FD_RESERVE)
        log.warning("http.connection_cap_lowered", wanted=connections, cap=fitted, nofile=soft)
        return fitted
    return connections


class HttpServer:
    """The exporter's HTTP(S) server, on its own IOLoop in a background thread.

    The sockets are bound in the constructor, so a bad address or a busy port raises
    :class:`BindError` at once; ``start`` begins serving, ``stop`` shuts down gracefully. Its
    own counters (requests, failed logins) live in ``registry``.
    """

    def __init__(
        self,
        source: MetricsSource,
        status: Callable[[], Status],
        address: str,
        port: int,
        *,
        web_config: LiveWebConfig | None = None,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout: float = IDLE_TIMEOUT,
        body_timeout: float = BODY_TIMEOUT,
        max_header_size: int = MAX_HEADER_SIZE,
    ) -> None:
        _quiet_tornado()
        self.registry = CollectorRegistry()
        self.web = web_config or LiveWebConfig.from_file(None)
        self.max_connections = _fit_fd_limit(max_connections)
        self._timeouts = (idle_timeout, body_timeout, max_header_size)
        self._context = _Context(
            source,
            LivePart(self.registry),
            status,
            self.web,
            Authenticator(),
            HttpTelemetry(self.registry),
            ThreadPoolExecutor(1, thread_name_prefix="http-render"),
            ThreadPoolExecutor(1, thread_name_prefix="http-bcrypt"),
        )
        self._sockets = bind(address, port)
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)
        self._ready = threading.Event()
        self._loop: IOLoop | None = None
        self._server: _CappedServer | None = None
        self._failed: BaseException | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self._sockets[0].getsockname()[1])

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Every (host, port) listened on."""
        return [tuple(s.getsockname()[:2]) for s in self._sockets]

    @property
    def scheme(self) -> str:
        """``https`` with a TLS web configuration, else ``http``."""
        return "https" if self.web.context is not None else "http"

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._server._connections) if self._server else 0

    def start(self) -> None:
        """Start serving (returns once the IOLoop accepts connections)."""
        self._thread.start()
        self._ready.wait(30)
        if self._failed is not None:
            raise RuntimeError(f"HTTP server failed to start: {self._failed!r}")

    def _serve(self) -> None:
        loop = IOLoop(make_current=False)
        try:
            loop.run_sync(self._setup)
        except BaseException as exc:
            self._failed = exc
            self._ready.set()
            loop.close()
            return
        self._loop = loop
        self._ready.set()
        loop.start()
        loop.close(all_fds=False)

    async def _setup(self) -> None:
        idle, body_timeout, header_size = self._timeouts
        app = Application(
            [
                (r"/metrics", _Metrics, {"context": self._context}),
                (r"/healthz", _Healthz, {"context": self._context}),
                (r"/readyz", _Readyz, {"context": self._context}),
                (r"/", _Landing, {"context": self._context}),
            ],
            default_handler_class=_NotFound,
            default_handler_args={"context": self._context},
            log_function=_access_log,
            compress_response=False,  # gzip is prepared once per snapshot, not per response
        )
        server = _CappedServer(
            app,
            ssl_options=self.web.context,
            idle_connection_timeout=idle,
            body_timeout=body_timeout,
            max_header_size=header_size,
            max_body_size=MAX_BODY_SIZE,
            decompress_request=False,
        )
        server.max_connections = self.max_connections
        server.add_sockets(self._sockets)
        self._server = server
        if self.web.config.path is not None:
            PeriodicCallback(self._reload, RELOAD_SECONDS * 1000).start()

    def _reload(self) -> None:
        if self.web.refresh() and self._server is not None:
            # new connections handshake with the new certificate; open ones keep theirs
            self._server.ssl_options = self.web.context

    def stop(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop accepting, wait up to ``grace`` s for in-flight requests, close everything."""
        loop = self._loop
        if loop is None:
            for sock in self._sockets:
                sock.close()
            return
        done = threading.Event()

        async def shutdown() -> None:
            try:
                assert self._server is not None
                self._server.stop()
                deadline = time.monotonic() + grace
                while self._context.in_flight > 0 and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                    await asyncio.wait_for(self._server.close_all_connections(), 1.0)
            finally:
                loop.stop()
                done.set()

        loop.add_callback(shutdown)
        done.wait(grace + 5)
        self._thread.join(grace + 5)
        self._loop = None
        self._context.render_pool.shutdown(wait=False)
        self._context.bcrypt_pool.shutdown(wait=False)
