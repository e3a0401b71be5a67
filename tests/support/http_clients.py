"""A server over a fixed body, and raw socket exchanges, as the client-abuse tests drive them."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from collections.abc import Iterator, Sequence

from iceprod_exporter.exposition.formats import Format
from iceprod_exporter.http.server import HttpServer
from iceprod_exporter.model.status import Status

BODY = b"iceprod_up 1\n"


class Fixed:
    """A metrics source with fixed bytes; identity bodies wait while ``hold`` is clear."""

    def __init__(self) -> None:
        self.hold = threading.Event()
        self.hold.set()

    def has_snapshot(self) -> bool:
        return True

    def wait_for_snapshot(self) -> None:
        pass

    def chunks(self, fmt: Format, gzipped: bool = False) -> Sequence[bytes]:
        if not gzipped:  # identity bodies are made in a worker, gzip ones on the IOLoop
            self.hold.wait(10)
        return (BODY,)


def ok() -> Status:
    return Status(True, "ok", True, "ok")


@contextlib.contextmanager
def serving(source: Fixed | None = None, **kwargs: object) -> Iterator[HttpServer]:
    server = HttpServer(source or Fixed(), ok, "127.0.0.1", 0, **kwargs)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop(grace=1)


def exchange(port: int, data: bytes, timeout: float = 5) -> tuple[bytes, float]:
    """Send ``data`` on a new connection; everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        started = time.monotonic()
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received, time.monotonic() - started


def status_of(response: bytes) -> int:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            assert int(value) == len(body), response[:200]
    return int(lines[0].split(b" ")[1])


TLS_HELLO = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + os.urandom(32)


HEADS = {
    "60 KB query string": (b"GET /metrics?q=" + b"a" * 60_000 + b" HTTP/1.1\r\n\r\n", 414),
    "60 KB method": (b"A" * 60_000 + b" /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    "55 KB Accept-Encoding": (
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: " + b"g" * 55_000 + b"\r\n\r\n",
        431,
    ),
    "2,000 small headers": (
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(2000)) + b"\r\n",
        431,
    ),
    "garbage": (b"BLAH\r\n\r\n", 400),
    "HTTP/0.9": (b"GET /metrics\r\n", 400),
    "TLS hello on the plain port": (TLS_HELLO, 400),
    "binary": (b"\x00\xff\xfe\r\n\r\n", 400),
    "HTTP/2 preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    "a header line without a colon": (b"GET / HTTP/1.1\r\nHost x\r\n\r\n", 400),
}


def still_open(socks: Sequence[socket.socket]) -> list[bool]:
    """Which of ``socks`` the server keeps open (it sends nothing on them but its close)."""
    readable, _, _ = select.select(socks, [], [], 0.05)
    return [s not in readable for s in socks]
