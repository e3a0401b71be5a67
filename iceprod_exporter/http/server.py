"""The HTTP(S) server: binding the listening sockets, and Tornado on its own IOLoop and thread.

It serves ``/metrics``, ``/healthz``, ``/readyz`` and a landing page (:mod:`.handlers`) under the
connection rules of :mod:`.connections`, with the TLS and logins of the web configuration
(:mod:`.web_config`). The daemon runs it in a process of its own
(:mod:`iceprod_exporter.serving`), so scrapes never compete with polling for the interpreter.
Tornado's own log lines go to structlog, never with a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import structlog
from prometheus_client import CollectorRegistry
from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.netutil import bind_sockets

from iceprod_exporter.exposition.formats import OwnMetricsPart
from iceprod_exporter.exposition.telemetry import HttpTelemetry
from iceprod_exporter.http.connections import (
    BODY_TIMEOUT,
    BUSY_GRACE,
    HEADER_TIMEOUT,
    IDLE_TIMEOUT,
    MAX_BODY_SIZE,
    MAX_CONNECTIONS,
    MAX_HEADER_SIZE,
    CappedServer,
)
from iceprod_exporter.http.handlers import HandlerContext, MetricsSource, application
from iceprod_exporter.http.logins import BCRYPT_QUEUE, Authenticator, LoginChecks
from iceprod_exporter.http.web_config import RELOAD_SECONDS, LiveWebConfig
from iceprod_exporter.model.status import Status

log = structlog.get_logger(__name__)

#: listen backlog: a burst of Prometheus replicas and dashboards reconnecting at once
BACKLOG = 1024
#: how long ``stop`` waits for in-flight requests
SHUTDOWN_GRACE = 5.0
#: file descriptors kept free for the poller's sockets, logs and config files
_FD_RESERVE = 128


class BindError(Exception):
    """The server cannot listen; ``setting`` is the one at fault (listen_address or port)."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting
        self.message = message


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
        header_timeout: float = HEADER_TIMEOUT,
        body_timeout: float = BODY_TIMEOUT,
        max_header_size: int = MAX_HEADER_SIZE,
        bcrypt_queue: int = BCRYPT_QUEUE,
        busy_grace: float = BUSY_GRACE,
    ) -> None:
        _quiet_tornado()
        self.registry = CollectorRegistry()
        self.web = web_config or LiveWebConfig.from_file(None)
        self.max_connections = _fit_fd_limit(max_connections)
        self._timeouts = (idle_timeout, header_timeout, body_timeout, max_header_size, busy_grace)
        self._context = HandlerContext(
            source,
            OwnMetricsPart(self.registry),
            status,
            self.web,
            HttpTelemetry(self.registry),
            ThreadPoolExecutor(1, thread_name_prefix="http-render"),
            LoginChecks(Authenticator(), bcrypt_queue),
        )
        self._sockets = bind(address, port)
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)
        self._ready = threading.Event()
        self._loop: IOLoop | None = None
        self._server: CappedServer | None = None
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

    @property
    def answering(self) -> int:
        """Connections with a request in, being answered now."""
        return self._server.answering if self._server else 0

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
        idle, header_timeout, body_timeout, header_size, busy_grace = self._timeouts
        server = CappedServer(
            application(self._context),
            ssl_options=self.web.context,
            idle_connection_timeout=idle,
            body_timeout=body_timeout,
            max_header_size=header_size,
            max_body_size=MAX_BODY_SIZE,
            decompress_request=False,
        )
        server.max_connections = self.max_connections
        server.idle_timeout, server.header_timeout = idle, header_timeout
        server.busy_grace = busy_grace
        server.telemetry = self._context.telemetry
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
        self._context.checks.shutdown()
