"""Outbound HTTP/1.1 with hard bounds, on the event loop: every call ends by its deadline.

A small client on asyncio streams, because the bounds are the point:

* **a total deadline.** The whole call (connect, TLS, request, headers, body, redirects) runs
  under one ``asyncio.timeout``; when it ends, or the call is cancelled (a poll's deadline,
  shutdown), the socket is aborted. No thread, so nothing is left waiting on a server that
  drips a byte every 0.5 s, stops after the headers or sends an endless chunked body.
* **a body cap, after decompression.** A ``Content-Length`` over it is refused before the body
  is read; chunked, read-to-close and gzip bodies are counted as they arrive (gzip inflated in
  bounded steps) and abandoned at the cap. Headers are capped at :data:`MAX_HEAD` bytes.
* **redirects by rule.** A caller allows a number of same-origin hops (the API) or none (token
  and discovery requests); any other redirect fails with reason ``redirect``, so no credential
  is ever sent to an origin it was not configured for.
* **keep-alive.** Idle connections are kept per origin (up to ``max_idle``, for
  :data:`IDLE_SECONDS`), which is most of what a steady poll saves in CPU against a connection
  per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import urllib.parse
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from .labels import Reason

#: bytes of a status line plus headers, and of one chunk-size or trailer line, at most
MAX_HEAD = 64 * 1024
#: an idle connection older than this is closed rather than reused (servers drop idle ones)
IDLE_SECONDS = 30.0
#: bytes read or inflated per step
STEP = 64 * 1024
REDIRECTS = frozenset({301, 302, 303, 307, 308})
_NO_BODY = frozenset({204, 304})

Origin = tuple[str, str, int]


class TransportError(Exception):
    """A call that got no usable answer; ``reason`` is a bounded metric label."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class Response:
    """A complete answer: status, headers (names in lower case) and the decompressed body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


def origin(url: str) -> Origin:
    """Scheme, host and port of an http(s) URL (ValueError for anything else)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {parts.scheme or '?'}://...")
    return parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def same_origin(a: str, b: str) -> bool:
    """True when both are http(s) URLs with the same scheme, host and port (RFC 6454)."""
    try:
        return origin(a) == origin(b)
    except ValueError:
        return False


class _TooLarge(Exception):
    pass


class _Body:
    """Collects a body up to ``limit`` bytes after decompression (gzip, member by member)."""

    def __init__(self, limit: int, encoding: str) -> None:
        if encoding not in ("", "identity", "gzip", "x-gzip"):
            raise ValueError(f"unsupported Content-Encoding {encoding[:40]!r}")
        self._limit = limit
        self._inflate = zlib.decompressobj(wbits=31) if "gzip" in encoding else None
        self._chunks: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> None:
        if self._inflate is None:
            self._keep(data)
            return
        while data:
            out = self._inflate.decompress(data, STEP)
            self._keep(out)
            data = self._inflate.unconsumed_tail
            if self._inflate.eof:  # a gzip member ended: the next one starts afresh
                data = self._inflate.unused_data + data
                self._inflate = zlib.decompressobj(wbits=31)

    def _keep(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            self._chunks.clear()
            raise _TooLarge
        self._chunks.append(data)

    def value(self) -> bytes:
        return b"".join(self._chunks)


class _Connection:
    """One socket: its streams and when it went idle."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.loop = asyncio.get_running_loop()
        self.idle_since = 0.0
        self.answered = False  # an answer has begun on it since it was taken

    def usable(self, loop: asyncio.AbstractEventLoop) -> bool:
        return (
            loop is self.loop
            and loop.time() - self.idle_since < IDLE_SECONDS
            and not self.reader.at_eof()
            and not self.writer.is_closing()
        )

    def abort(self) -> None:
        if not self.loop.is_closed():  # else the loop's end closed the socket already
            self.writer.transport.abort()


class Transport:
    """HTTP/1.1 calls bounded in time and size; ``max_idle`` kept-alive sockets per origin."""

    def __init__(self, *, max_body: int, max_idle: int) -> None:
        self.max_body = max_body
        self._max_idle = max_idle
        self._idle: dict[Origin, list[_Connection]] = {}
        self._tls: ssl.SSLContext | None = None

    def close(self) -> None:
        """Close the idle sockets (a call in flight ends by its own deadline)."""
        for connections in self._idle.values():
            for connection in connections:
                connection.abort()
        self._idle.clear()

    async def fetch(
        self,
        url: str,
        *,
        timeout: float,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        redirects: int = 0,
    ) -> Response:
        """One call, ``timeout`` seconds at most in all; follows ``redirects`` same-origin hops.

        Answers of any status are returned, except redirects: one to another origin, or past
        the allowed hops, raises ``TransportError(Reason.REDIRECT)``.
        """
        start = url
        try:
            async with asyncio.timeout(timeout):
                for _ in range(redirects + 1):
                    response = await self._exchange(url, method, headers or {}, body)
                    if response.status not in REDIRECTS:
                        return response
                    location = response.headers.get("location", "")
                    url = urllib.parse.urljoin(url, location)
                    if not location or not same_origin(start, url):
                        raise TransportError(
                            Reason.REDIRECT,
                            f"HTTP {response.status} to another origin, not followed",
                        )
                raise TransportError(Reason.REDIRECT, f"more than {redirects} redirects")
        except TimeoutError:
            raise TransportError(
                Reason.TIMEOUT, f"no complete answer within {timeout:.1f}s"
            ) from None
        except _TooLarge:
            raise TransportError(
                Reason.TOO_LARGE, f"body over {self.max_body} bytes, abandoned"
            ) from None
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise TransportError(
                Reason.CONNECTION, f"connection lost ({type(exc).__name__})"
            ) from None
        except OSError as exc:  # refused, unreachable, DNS, TLS
            raise TransportError(Reason.CONNECTION, type(exc).__name__) from None
        except (ValueError, asyncio.LimitOverrunError, zlib.error) as exc:
            raise TransportError(
                Reason.BAD_RESPONSE, f"malformed answer: {str(exc)[:120]}"
            ) from None

    async def _exchange(
        self, url: str, method: str, headers: Mapping[str, str], body: bytes | None
    ) -> Response:
        where = origin(url)
        connection = self._pooled(where)
        if connection is not None:
            try:
                return await self._on(connection, where, url, method, headers, body)
            except (asyncio.IncompleteReadError, ConnectionError):
                if connection.answered or method != "GET":
                    raise  # the answer had begun: not a stale socket
            # the server closed the idle socket as it was reused: once more, on a new one
        return await self._on(await self._connect(where), where, url, method, headers, body)

    async def _on(
        self,
        connection: _Connection,
        where: Origin,
        url: str,
        method: str,
        headers: Mapping[str, str],
        body: bytes | None,
    ) -> Response:
        try:
            connection.writer.write(_request(url, method, headers, body))
            response, keep = await self._read(connection, method)
        except BaseException:
            connection.abort()
            raise
        if keep:
            self._park(where, connection)
        else:
            connection.abort()
        return response

    def _pooled(self, where: Origin) -> _Connection | None:
        connections = self._idle.get(where, [])
        loop = asyncio.get_running_loop()
        while connections:
            connection = connections.pop()
            if connection.usable(loop):
                connection.answered = False
                return connection
            connection.abort()
        return None

    def _park(self, where: Origin, connection: _Connection) -> None:
        connections = self._idle.setdefault(where, [])
        if len(connections) >= self._max_idle:
            connection.abort()
            return
        connection.idle_since = asyncio.get_running_loop().time()
        connections.append(connection)

    async def _connect(self, where: Origin) -> _Connection:
        scheme, host, port = where
        tls = None
        if scheme == "https":
            if self._tls is None:
                self._tls = tls_context()
            tls = self._tls
        reader, writer = await asyncio.open_connection(
            host, port, ssl=tls, server_hostname=host if tls else None, limit=MAX_HEAD
        )
        return _Connection(reader, writer)

    async def _read(self, connection: _Connection, method: str) -> tuple[Response, bool]:
        reader = connection.reader
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            connection.answered = True
            version, status, headers = _parse_head(head)
            if not 100 <= status < 200:
                break
        collected = _Body(self.max_body, headers.get("content-encoding", "").strip().lower())
        keep = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
        if method == "HEAD" or status in _NO_BODY:
            pass
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            await self._chunked(reader, collected)
        elif "content-length" in headers:
            await self._sized(reader, collected, _length(headers["content-length"]))
        else:
            keep = False  # the body ends when the server closes
            while data := await reader.read(STEP):
                collected.feed(data)
        return Response(status, headers, collected.value()), keep

    async def _sized(self, reader: asyncio.StreamReader, body: _Body, length: int) -> None:
        if length > self.max_body:
            raise _TooLarge
        while length:
            data = await reader.readexactly(min(length, STEP))
            body.feed(data)
            length -= len(data)

    async def _chunked(self, reader: asyncio.StreamReader, body: _Body) -> None:
        received = 0
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers, not used
                return
            received += size
            if received > self.max_body:  # the raw bytes alone are over the cap
                raise _TooLarge
            await self._sized(reader, body, size)
            if await reader.readexactly(2) != b"\r\n":
                raise ValueError("chunk not followed by CRLF")


def tls_context() -> ssl.SSLContext:
    """Verifying TLS: the CAs of ``REQUESTS_CA_BUNDLE`` or the system's, else certifi's.

    ``REQUESTS_CA_BUNDLE`` keeps working as it did with requests; without it the system's store
    (where ``SSL_CERT_FILE``/``SSL_CERT_DIR`` apply), or Mozilla's on an image that has none.
    """
    bundle = os.environ.get("REQUESTS_CA_BUNDLE")
    context = ssl.create_default_context(cafile=bundle or None)
    if not bundle and not context.cert_store_stats()["x509_ca"]:
        with contextlib.suppress(ImportError):
            import certifi  # requests' dependency

            context.load_verify_locations(certifi.where())
    return context


def _request(url: str, method: str, headers: Mapping[str, str], body: bytes | None) -> bytes:
    parts = urllib.parse.urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.netloc.rpartition("@")[2]
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Accept-Encoding: gzip"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    if any(c in line for line in lines for c in "\r\n\0"):
        raise ValueError("a request line or header holds a line break")
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + (body or b"")


def _parse_head(head: bytes) -> tuple[str, int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ValueError(f"not an HTTP/1.x status line: {lines[0][:60]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError("a header line without a colon")
            key, value = name.strip().lower(), value.strip()
            if key not in headers:
                headers[key] = value
            elif key == "content-length":
                if headers[key] != value:
                    raise ValueError("conflicting Content-Length headers")
            else:
                headers[key] = f"{headers[key]}, {value}"
    return version, int(code), headers


def _length(value: str) -> int:
    if not value.isdigit():
        raise ValueError(f"Content-Length {value[:40]!r}")
    return int(value)
