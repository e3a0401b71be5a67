"""Outbound HTTP with hard bounds: every call ends by its deadline, whatever the server does.

aiohttp speaks HTTP (framing, keep-alive, TLS); this module adds the bounds the exporter needs:

* **a total deadline.** The whole call (connect, TLS, request, headers, body, redirects) runs
  under one ``asyncio.timeout``; when it ends, or the call is cancelled (a poll's deadline,
  shutdown), aiohttp closes the connection instead of pooling it, so nothing is left waiting
  on a server that drips a byte every 0.5 s, stops after the headers or sends an endless
  chunked body. (Name lookups run in aiohttp's resolver thread: a hung DNS server can keep
  that thread busy past the call, but not the call.)
* **a body cap, after decompression.** A ``Content-Length`` over it is refused before the body
  is read; other bodies are counted as they arrive and abandoned at the cap. aiohttp's own
  decompression is off: gzip is inflated here in bounded steps, so a gzip bomb stops at the
  cap too. Header lines and their number are capped (:data:`MAX_HEADER_LINE`,
  :data:`MAX_HEADERS`).
* **redirects by rule.** aiohttp follows none; a caller allows a number of same-origin hops (the
  API) or none (token and discovery requests), and any other redirect fails with reason
  ``redirect``, so no credential is ever sent to an origin it was not configured for.
* **keep-alive.** Up to ``connections`` connections per origin, idle ones kept for
  :data:`IDLE_SECONDS`, which is most of what a steady poll saves in CPU against a connection
  per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import urllib.parse
import zlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp
import certifi

from iceprod_exporter.source.labels import Reason

#: bytes of the status line or of one header line, at most; and header lines, at most
MAX_HEADER_LINE = 8190
MAX_HEADERS = 128
#: an idle connection older than this is closed rather than reused (servers drop idle ones)
IDLE_SECONDS = 30.0
#: bytes inflated per step
STEP = 64 * 1024
REDIRECTS = frozenset({301, 302, 303, 307, 308})

Origin = tuple[str, str, int]


class TransportError(Exception):
    """A call that got no usable answer; ``reason`` is a bounded metric label."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class Response:
    """A complete answer: status, headers (names case-insensitive) and the decompressed body."""

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
    """Collects a body up to ``limit`` bytes, received and after decompression (gzip members)."""

    def __init__(self, limit: int, encoding: str) -> None:
        if encoding not in ("", "identity", "gzip", "x-gzip"):
            raise ValueError(f"unsupported Content-Encoding {encoding[:40]!r}")
        self._limit = limit
        self._inflate = zlib.decompressobj(wbits=31) if "gzip" in encoding else None
        self._chunks: list[bytes] = []
        self._size = 0
        self._received = 0  # an endless stream of empty gzip members is bounded too

    def feed(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > self._limit:
            raise _TooLarge
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


class Transport:
    """HTTP calls bounded in time and size, on at most ``connections`` per origin.

    ``connections`` 0 opens a connection per call and keeps none (token and discovery requests:
    rare, and their owner never has to close anything).
    """

    def __init__(self, *, max_body: int, connections: int) -> None:
        self.max_body = max_body
        self._connections = connections
        self._pool: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tls: ssl.SSLContext | None = None
        self._closing: set[asyncio.Task[None]] = set()  # held until done (asyncio keeps weak refs)

    def close(self) -> None:
        """Close the pooled connections on the loop's next turn (a call in flight then fails)."""
        pool, loop, self._pool = self._pool, self._loop, None
        if pool is not None and loop is not None and not loop.is_closed():
            # aiohttp closes only in a coroutine; asyncio.run runs a task made before it ends
            closing = loop.create_task(pool.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        # else nothing is pooled, or the loop's end dropped its sockets already

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
            async with asyncio.timeout(timeout), self._session() as session:
                for _ in range(redirects + 1):
                    response = await self._exchange(session, url, method, headers, body)
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
        except TimeoutError:  # aiohttp's own (connect, read) timeouts are TimeoutErrors too
            raise TransportError(
                Reason.TIMEOUT, f"no complete answer within {timeout:.1f}s"
            ) from None
        except _TooLarge:
            raise TransportError(
                Reason.TOO_LARGE, f"body over {self.max_body} bytes, abandoned"
            ) from None
        except aiohttp.ClientResponseError as exc:  # a head or chunk framing aiohttp refused
            first = exc.message.partition("\n")[0]
            raise TransportError(Reason.BAD_RESPONSE, f"malformed answer: {first[:120]}") from None
        except (aiohttp.ClientError, OSError) as exc:  # refused, reset, cut short, DNS, TLS
            raise TransportError(Reason.CONNECTION, _cause(exc)) from None
        except (ValueError, zlib.error) as exc:
            raise TransportError(
                Reason.BAD_RESPONSE, f"malformed answer: {str(exc)[:120]}"
            ) from None

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[aiohttp.ClientSession]:
        """The pooled session of the running loop, or one for this call only."""
        if not self._connections:
            async with self._new_session(aiohttp.TCPConnector(force_close=True)) as session:
                yield session
            return
        loop = asyncio.get_running_loop()
        if self._pool is None or self._loop is not loop:
            self.close()
            connector = aiohttp.TCPConnector(
                limit_per_host=self._connections, keepalive_timeout=IDLE_SECONDS
            )
            self._pool, self._loop = self._new_session(connector), loop
        yield self._pool

    def _new_session(self, connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=connector,
            # the bodies are inflated by _Body, within the cap; only gzip is understood there
            auto_decompress=False,
            headers={"Accept-Encoding": "gzip"},
            cookie_jar=aiohttp.DummyCookieJar(),  # none kept: a hostile server could fill a jar
            max_line_size=MAX_HEADER_LINE,
            max_field_size=MAX_HEADER_LINE,
            max_headers=MAX_HEADERS,
        )

    async def _exchange(
        self,
        session: aiohttp.ClientSession,
        url: str,
        method: str,
        headers: Mapping[str, str] | None,
        body: bytes | None,
    ) -> Response:
        async with session.request(
            method,
            url,
            headers=headers,
            data=body,
            allow_redirects=False,
            ssl=self._trust() if origin(url)[0] == "https" else True,
        ) as answer:
            length = answer.content_length
            if length is not None and length > self.max_body:
                raise _TooLarge  # leaving unread closes the connection
            collected = _Body(
                self.max_body, answer.headers.get("Content-Encoding", "").strip().lower()
            )
            async for data in answer.content.iter_any():
                collected.feed(data)
            return Response(answer.status, answer.headers, collected.value())

    def _trust(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = tls_context()
        return self._tls


def _cause(exc: BaseException) -> str:
    """The kind of failure, without the URL or headers aiohttp's messages may hold."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return type(exc).__name__


def tls_context() -> ssl.SSLContext:
    """Verifying TLS: the CAs of ``REQUESTS_CA_BUNDLE`` or the system's, else certifi's.

    ``REQUESTS_CA_BUNDLE`` keeps working as it did with requests; without it the system's store
    (where ``SSL_CERT_FILE``/``SSL_CERT_DIR`` apply), or Mozilla's on an image that has none.
    """
    bundle = os.environ.get("REQUESTS_CA_BUNDLE")
    context = ssl.create_default_context(cafile=bundle or None)
    if not bundle and not context.cert_store_stats()["x509_ca"]:
        context.load_verify_locations(certifi.where())
    return context
