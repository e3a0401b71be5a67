"""The connection rules: each request's head read under a deadline and size limits, and the cap.

Tornado waits for a head up to one timeout and closes an oversized one without a word; here each
head is read by :class:`_Connection`, answered 400/408/414/431/505 when it breaks a rule, and at
the connection cap the connection that has waited longest for a request is closed to make room
(:class:`CappedServer`). Neither gets a traceback into the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TypeVar, cast

import structlog
from tornado import gen, httputil
from tornado.http1connection import HTTP1Connection, HTTP1ServerConnection
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, SSLIOStream, StreamClosedError

from iceprod_exporter.exposition.telemetry import HttpTelemetry

log = structlog.get_logger(__name__)
_T = TypeVar("_T")

#: connections open at once (the file-descriptor limit is raised to fit); a new one past it
#: closes the connection that has waited longest for a request
MAX_CONNECTIONS = 1000
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


def _check_start_line(line: bytes) -> None:
    """Raise :class:`_Refused` unless ``line`` is an HTTP/1.x request line (505 other versions)."""
    text = line.decode("latin-1").rstrip("\r\n")
    try:
        httputil.parse_request_start_line(text)
    except httputil.HTTPInputError:  # HTTP/0.9 (no version), garbage, HTTP/2's preface
        parts = text.split(" ")
        other_version = len(parts) == 3 and _OTHER_VERSION.match(parts[2])
        raise _Refused(505 if other_version else 400) from None


def _fields_complete(fields: bytes) -> bool:
    """Whether header fields read end with their blank line (else the size limit stopped them)."""
    return fields in (b"\n", b"\r\n") or fields.endswith((b"\n\n", b"\n\r\n"))


class _Connection(HTTP1ServerConnection):
    """One client connection: each request's head is read here, the rest by Tornado.

    Tornado waits for a head up to one timeout (the keep-alive idle time) and closes an oversized
    one without a word. Here a new connection has :data:`HEADER_TIMEOUT` for its first head, a
    kept-alive one :data:`IDLE_TIMEOUT` for the next request's first byte and then
    :data:`HEADER_TIMEOUT` for the rest; a head that breaks a rule gets its status at once
    (400 garbage or HTTP/0.9, 414 request line, 431 header fields, 505 HTTP version, 408 a head
    begun but not finished in time), a connection that never sent a byte is closed silently.
    It tells the server when it waits for a request and when one is in (:class:`CappedServer`).
    """

    def __init__(self, server: CappedServer, stream: IOStream, address: Any) -> None:
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
        server, now = self._server, IOLoop.current().time
        began = False  # a byte of this head arrived
        try:
            first = await self._within(
                self.stream.read_bytes(1), deadline or now() + server.idle_timeout
            )
            began = True
            deadline = deadline or now() + server.header_timeout
            line = await self._request_line(first, deadline)
            fields = await self._within(self.stream.read_until_regex(server.fields_end), deadline)
            if not _fields_complete(fields):
                raise _Refused(431)
        except TimeoutError:
            if not began:
                self.stream.close()  # nothing asked, nothing to answer
                return None
            await self._refuse(408, drain=False)  # the timed-out read is still pending
            return None
        except _Refused as refused:
            await self._refuse(refused.code, drain=True)
            return None
        return line + fields

    async def _request_line(self, first: bytes, deadline: float) -> bytes:
        """The request line from its first byte on, empty lines before it skipped."""
        for _ in range(_EMPTY_LINES):
            if first not in (b"\r", b"\n"):
                break
            first = await self._within(self.stream.read_bytes(1), deadline)
        if first[0] not in _TCHAR:  # binary, a TLS hello on the plain port: no request
            raise _Refused(400)
        end = self._server.line_end
        line = first + await self._within(self.stream.read_until_regex(end), deadline)
        if not line.endswith(b"\n"):
            raise _Refused(414)
        _check_start_line(line)
        return line

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


class CappedServer(HTTPServer):
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
