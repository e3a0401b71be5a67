"""HTTP: ``/metrics``, ``/healthz``, ``/readyz`` and a landing page, on Tornado.

Tornado runs on its own IOLoop in a dedicated thread. Every handler reads in-memory state only:
``/metrics`` is the server's own counters rendered now, then the bytes of a
:class:`MetricsSource` (the exporter's self-metrics and the snapshot, prepared once per poll).
The daemon runs this server in a process of its own (:mod:`iceprod_exporter.serving`), so
scrapes never compete with polling for the interpreter.
Misbehaving clients are bounded: each request's head is read here (:class:`_Connection`) under a
deadline and size limits and answered 400/408/414/431/505 when it breaks them; at the connection
cap the connection that has waited longest for a request is closed to make room
(:class:`_CappedServer`); bcrypt checks wait in a bounded first-come queue that drops those whose
client has gone (:class:`_Checks`). None of them gets a traceback into the log.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import functools
import logging
import re
import resource
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol, TypeVar, cast

import structlog
from prometheus_client import CollectorRegistry
from tornado import gen, httputil
from tornado.http1connection import HTTP1Connection, HTTP1ServerConnection
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.iostream import IOStream, SSLIOStream, StreamClosedError
from tornado.netutil import bind_sockets
from tornado.web import Application, HTTPError, RequestHandler

from iceprod_exporter import __version__
from iceprod_exporter.exposition.formats import CONTENT_TYPES, Format, OwnMetricsPart
from iceprod_exporter.exposition.telemetry import HttpTelemetry
from iceprod_exporter.http import landing
from iceprod_exporter.http.negotiation import accepts_gzip, negotiate
from iceprod_exporter.http.web_config import RELOAD_SECONDS, Authenticator, LiveWebConfig
from iceprod_exporter.model.status import Status

log = structlog.get_logger(__name__)
_T = TypeVar("_T")

#: connections open at once (the file-descriptor limit is raised to fit); a new one past it
#: closes the connection that has waited longest for a request
MAX_CONNECTIONS = 1000
#: listen backlog: a burst of Prometheus replicas and dashboards reconnecting at once
BACKLOG = 1024
#: a kept-alive connection may wait this long for its next request: above the common 60 s scrape
#: interval, so Prometheus keeps its connection
IDLE_TIMEOUT = 65.0
#: a request's head (TLS handshake and request line included on a new connection) must be in
#: this long after the connection opened or the request's first byte came; Prometheus sends its
#: few hundred bytes at once
HEADER_TIMEOUT = 5.0
#: GET and HEAD carry no body: a few KiB, read within a few seconds
BODY_TIMEOUT = 10.0
MAX_BODY_SIZE = 4096
#: at the cap with every connection's request in, one whose answer has taken this long (a client
#: that does not read it) is closed to make room
BUSY_GRACE = 5.0
#: request line (414 past it), then the header fields (431 past them)
MAX_REQUEST_LINE = 8 * 1024
MAX_HEADER_SIZE = 16 * 1024
#: after a refusal, what the client still sends is read (up to this much, for up to this long)
#: before closing, so that the close does not reset the connection before the answer is read
LINGER_BYTES = 256 * 1024
LINGER_SECONDS = 1.0
#: bcrypt checks waiting for the one worker, past which a new one is answered 503: at cost 10
#: (50-100 ms a check) the last waits 3-6 s, within Prometheus' default 10 s scrape timeout
BCRYPT_QUEUE = 64
#: how long ``stop`` waits for in-flight requests
SHUTDOWN_GRACE = 5.0
#: file descriptors kept free for the poller's sockets, logs and config files
_FD_RESERVE = 128
REALM = "iceprod-exporter"
ALLOW = "GET, HEAD"


class BindError(Exception):
    """The server cannot listen; ``setting`` is the one at fault (listen_address or port)."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting
        self.message = message


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


# --------------------------------------------------------------------------- handlers


@dataclass
class _Context:
    source: MetricsSource
    own: OwnMetricsPart  # the server's own counters
    status: Callable[[], Status]
    web: LiveWebConfig
    auth: Authenticator
    telemetry: HttpTelemetry
    render_pool: ThreadPoolExecutor
    checks: _Checks
    in_flight: int = 0

    def chunks(self, fmt: Format, gzipped: bool) -> Sequence[bytes]:
        """/metrics bytes: the server's counters, then the source."""
        return (self.own(fmt, gzipped), *self.source.chunks(fmt, gzipped))

    def body(self, fmt: Format) -> bytes:
        """/metrics bytes without compression, joined."""
        return b"".join(self.chunks(fmt, False))


_Login = tuple[Mapping[str, bytes], str, str]  # users, user, password
_Waiting = tuple["asyncio.Future[bool | None]", Callable[[], bool], _Login]  # result, gone, login


class _Checks:
    """bcrypt checks for the IOLoop: one at a time in one worker thread, in turn by client address.

    A remembered result answers at once (:meth:`Authenticator.known`). A check waits only while
    its client is connected: one whose client has gone is dropped unchecked, so a storm stops
    costing CPU once its clients go. Waiting checks are queued per client address, first come
    first served, and the addresses take turns: a login from Prometheus' host waits for one check
    per other address with checks waiting, however many one host queues; from a host it shares
    with the storm, for the checks queued before it (newest first would starve it as soon as
    wrong passwords arrive faster than they are checked). At most ``limit`` wait: past that, and
    once the gone are dropped, a new check takes the place of the newest of the address with
    the most waiting, or is answered 503 if that address is its own.
    """

    def __init__(self, auth: Authenticator, limit: int) -> None:
        self._auth = auth
        self._limit = limit
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="http-bcrypt")
        self._waiting: dict[str, deque[_Waiting]] = {}  # in turn order
        self._count = 0
        self._running = False

    async def check(self, login: _Login, peer: str, gone: Callable[[], bool]) -> bool | None:
        """Whether the credentials are good; ``None`` when not checked (queue full, or gone)."""
        known = self._auth.known(*login)
        if known is not None:
            return known
        if self._count >= self._limit and not self._make_room(peer):
            return None
        future: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(peer, deque()).append((future, gone, login))
        self._count += 1
        self._next()
        return await future

    def _make_room(self, peer: str) -> bool:
        for address, queue in list(self._waiting.items()):
            kept = deque(w for w in queue if not _dropped(w))
            self._count -= len(queue) - len(kept)
            if kept:
                self._waiting[address] = kept
            else:
                del self._waiting[address]
        if self._count < self._limit:
            return True
        busiest = max(self._waiting, key=lambda address: len(self._waiting[address]))
        if busiest == peer:
            return False
        queue = self._waiting[busiest]
        queue.pop()[0].set_result(None)
        self._count -= 1
        if not queue:
            del self._waiting[busiest]
        return True

    def _next(self) -> None:
        while self._waiting and not self._running:
            peer = next(iter(self._waiting))
            queue = self._waiting.pop(peer)
            waiting = queue.popleft()
            self._count -= 1
            if queue:
                self._waiting[peer] = queue  # behind the other addresses
            if _dropped(waiting):
                continue
            future, _, login = waiting
            self._running = True
            job = asyncio.get_running_loop().run_in_executor(self._pool, self._auth.check, *login)
            job.add_done_callback(functools.partial(self._done, future))

    def _done(self, future: asyncio.Future[bool | None], job: asyncio.Future[bool]) -> None:
        self._running = False
        if not future.done():
            error = job.exception()
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(job.result())
        self._next()

    def shutdown(self) -> None:
        """Stop the worker (a check running finishes on its own)."""
        self._pool.shutdown(wait=False)


def _dropped(waiting: _Waiting) -> bool:
    """Whether a waiting check is to be skipped: its request ended, or its client has gone."""
    future, gone, _ = waiting
    if not future.done() and gone():
        future.set_result(None)
    return future.done()


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
        if status_code == 405:
            self.set_header("Allow", ALLOW)
        if status_code == 401:
            self.set_header("WWW-Authenticate", f'Basic realm="{REALM}"')
        if status_code == 503:
            self.set_header("Retry-After", "1")
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


# --------------------------------------------------------------------------- server


#: RFC 9110 token characters: a request line starts with a method
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_OTHER_VERSION = re.compile(r"HTTP/[02-9]\.[0-9]\Z")
#: empty lines tolerated before a request line (RFC 9112 section 2.2)
_EMPTY_LINES = 4


@dataclass(frozen=True)
class _Peer:
    """What Tornado's request objects read from a connection's context."""

    remote_ip: str
    protocol: str

    def __str__(self) -> str:
        return self.remote_ip


class _HeadFirst:
    """A connection's stream with the request head already read put back in front.

    Tornado's :class:`HTTP1Connection` reads the head with one ``read_until_regex``; this hands
    it the head :class:`_Connection` read, and everything else (body, writes) goes to the stream.
    """

    def __init__(self, stream: IOStream, head: bytes) -> None:
        self._stream = stream
        self._head: bytes | None = head

    def read_until_regex(self, regex: bytes, max_bytes: int | None = None) -> Awaitable[bytes]:
        if self._head is None:
            return self._stream.read_until_regex(regex, max_bytes)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        future.set_result(self._head)
        self._head = None
        return future

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Received(httputil.HTTPMessageDelegate):
    """Passes a request on, telling its connection once the request is in (head and body)."""

    def __init__(self, inner: httputil.HTTPMessageDelegate, received: Callable[[], None]) -> None:
        self._inner = inner
        self._received = received

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        return self._inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self._inner.data_received(chunk)

    def finish(self) -> None:
        self._received()
        self._inner.finish()

    def on_connection_close(self) -> None:
        self._inner.on_connection_close()


class _Refused(Exception):
    """A request head that breaks a rule, answered with ``code`` and closed."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class _Connection(HTTP1ServerConnection):
    """One client connection: each request's head is read here, the rest by Tornado.

    Tornado waits for a head up to one timeout (the keep-alive idle time) and closes an oversized
    one without a word. Here a new connection has :data:`HEADER_TIMEOUT` for its first head, a
    kept-alive one :data:`IDLE_TIMEOUT` for the next request's first byte and then
    :data:`HEADER_TIMEOUT` for the rest; a head that breaks a rule gets its status at once
    (400 garbage or HTTP/0.9, 414 request line, 431 header fields, 505 HTTP version, 408 a head
    begun but not finished in time), a connection that never sent a byte is closed silently.
    It tells the server when it waits for a request and when one is in (:class:`_CappedServer`).
    """

    def __init__(self, server: _CappedServer, stream: IOStream, address: Any) -> None:
        peer = _Peer(
            str(address[0]) if isinstance(address, tuple) and address else "",
            "https" if isinstance(stream, SSLIOStream) else "http",
        )
        super().__init__(stream, server.conn_params, peer)
        self._server = server
        self._task: asyncio.Future[None] | None = None

    def start_serving(self, delegate: httputil.HTTPServerConnectionDelegate) -> None:
        self._task = asyncio.ensure_future(self._serve(delegate))

    async def close(self) -> None:
        self.stream.close()
        if self._task is not None:
            await asyncio.wait([self._task])

    async def _serve(self, delegate: httputil.HTTPServerConnectionDelegate) -> None:
        server = self._server
        first_deadline = IOLoop.current().time() + server.header_timeout
        kept = False  # a request was answered: the next head has the idle time to begin
        try:
            while True:
                server.waiting(self, kept)
                head = await self._head(None if kept else first_deadline)
                if head is None:
                    return
                conn = HTTP1Connection(
                    cast(IOStream, _HeadFirst(self.stream, head)), False, self.params, self.context
                )
                request = _Received(delegate.start_request(self, conn), lambda: server.busy(self))
                if not await conn.read_response(request):
                    return
                kept = True
        except (StreamClosedError, asyncio.CancelledError):
            return
        except Exception as exc:  # a bug here must not take the IOLoop down
            log.error("http.connection_failed", error=repr(exc))
        finally:
            self.stream.close()
            server.gone(self)
            delegate.on_close(self)

    async def _head(self, deadline: float | None) -> bytes | None:
        """The next request's head, or ``None`` once the connection was answered and closed.

        ``deadline`` for the whole head; ``None``: the idle time for its first byte, then the
        header timeout from that byte.
        """
        server, stream, now = self._server, self.stream, IOLoop.current().time
        began = False  # a byte of this head arrived
        try:
            first = await self._within(
                stream.read_bytes(1), deadline or now() + server.idle_timeout
            )
            began = True
            deadline = deadline or now() + server.header_timeout
            for _ in range(_EMPTY_LINES):
                if first not in (b"\r", b"\n"):
                    break
                first = await self._within(stream.read_bytes(1), deadline)
            if first[0] not in _TCHAR:  # binary, a TLS hello on the plain port: no request
                raise _Refused(400)
            line = first + await self._within(stream.read_until_regex(server.line_end), deadline)
            if not line.endswith(b"\n"):
                raise _Refused(414)
            text = line.decode("latin-1").rstrip("\r\n")
            try:
                httputil.parse_request_start_line(text)
            except httputil.HTTPInputError:  # HTTP/0.9 (no version), garbage, HTTP/2's preface
                parts = text.split(" ")
                other_version = len(parts) == 3 and _OTHER_VERSION.match(parts[2])
                raise _Refused(505 if other_version else 400) from None
            fields = await self._within(stream.read_until_regex(server.fields_end), deadline)
            if not (fields in (b"\n", b"\r\n") or fields.endswith((b"\n\n", b"\n\r\n"))):
                raise _Refused(431)
        except TimeoutError:
            if not began:
                stream.close()  # nothing asked, nothing to answer
                return None
            await self._refuse(408, drain=False)  # the timed-out read is still pending
            return None
        except _Refused as refused:
            await self._refuse(refused.code, drain=True)
            return None
        return line + fields

    @staticmethod
    async def _within(step: Awaitable[_T], deadline: float) -> _T:
        done: _T = await gen.with_timeout(deadline, step, quiet_exceptions=StreamClosedError)
        return done

    async def _refuse(self, code: int, drain: bool) -> None:
        """Answer ``code`` and close; ``drain``: first read what the client still sends."""
        reason = HTTPStatus(code).phrase
        body = f"{code} {reason}\n".encode()
        head = (
            f"HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        log.debug("http.refused", code=code)
        self._server.telemetry.requests.labels("other", str(code)).inc()
        until = IOLoop.current().time() + LINGER_SECONDS
        read = 0
        with contextlib.suppress(TimeoutError, StreamClosedError, OSError):
            await self._within(self.stream.write(head.encode() + body), until)
            if drain:
                # closing with unread bytes resets the connection, and the reset can destroy the
                # answer before the client reads it (RFC 9112 section 9.6): end our side (TCP
                # only, under TLS too), then read until the client closes, bounded
                socket.socket.shutdown(self.stream.socket, socket.SHUT_WR)
                while read < LINGER_BYTES:
                    step = self.stream.read_bytes(65536, partial=True)
                    read += len(await self._within(step, until))
        self.stream.close()


class _CappedServer(HTTPServer):
    """Reads request heads with :class:`_Connection`; at the cap it closes one to make room.

    It closes the connection that has waited longest without a request in (idle, or with a head
    or body begun and not finished), first among those that never had a request answered, then
    among kept-alive ones (Prometheus' connection between scrapes is one of those, and is kept
    while a crowd of new ones churns). If every connection has its request in, it closes the one
    whose answer has taken longest, past :data:`BUSY_GRACE` (a client that does not read its
    answer); else the new connection is closed at once.
    """

    max_connections = MAX_CONNECTIONS
    header_timeout = HEADER_TIMEOUT
    idle_timeout = IDLE_TIMEOUT
    busy_grace = BUSY_GRACE
    telemetry: HttpTelemetry

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        # the request line, or MAX_REQUEST_LINE bytes of one; the header fields through their
        # blank line, or max_header_size bytes of them (the first byte is read on its own)
        self.line_end = rb"\n|\A[^\n]{%d}" % (MAX_REQUEST_LINE - 1)
        self.fields_end = rb"\A\r?\n|\n\r?\n|\A(?:(?!\n\r?\n)[\s\S]){%d}" % (
            self.conn_params.max_header_size
        )
        # oldest first (dicts keep insertion order and remove in O(1)); busy: since when
        self._new: dict[_Connection, None] = {}
        self._kept: dict[_Connection, None] = {}
        self._busy: dict[_Connection, float] = {}

    def handle_stream(self, stream: IOStream, address: tuple[Any, ...]) -> None:
        if len(self._connections) >= self.max_connections:
            room = next(iter(self._new), None) or next(iter(self._kept), None)
            if room is None:
                busiest = next(iter(self._busy.items()), None)
                if busiest is None or IOLoop.current().time() - busiest[1] < self.busy_grace:
                    stream.close()
                    return
                room = busiest[0]
            self.gone(room)
            self._connections.discard(room)
            room.stream.close()
        conn = _Connection(self, stream, address)
        self._connections.add(conn)
        conn.start_serving(self)

    def waiting(self, conn: _Connection, kept: bool) -> None:
        """``conn`` waits for a request (``kept``: after answering one): the newest waiting."""
        self.gone(conn)
        (self._kept if kept else self._new)[conn] = None

    def busy(self, conn: _Connection) -> None:
        """``conn`` has its request in: it is answered, closed for room only past the grace."""
        self.gone(conn)
        self._busy[conn] = IOLoop.current().time()

    @property
    def answering(self) -> int:
        """Connections with a request in."""
        return len(self._busy)

    def gone(self, conn: _Connection) -> None:
        """``conn`` is closed."""
        self._new.pop(conn, None)
        self._kept.pop(conn, None)
        self._busy.pop(conn, None)

    def on_close(self, server_conn: object) -> None:
        # a connection closed for room has left the set already
        self._connections.discard(cast(HTTP1ServerConnection, server_conn))


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
        auth = Authenticator()
        self._context = _Context(
            source,
            OwnMetricsPart(self.registry),
            status,
            self.web,
            auth,
            HttpTelemetry(self.registry),
            ThreadPoolExecutor(1, thread_name_prefix="http-render"),
            _Checks(auth, bcrypt_queue),
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
