"""Hostile and careless clients over real sockets: bad heads, the connection cap, bcrypt storms.

Nothing a client sends or withholds may keep Prometheus from its scrape: heads are read under a
deadline and size limits and get their status, the connection cap closes the longest-waiting
connection to make room, and bcrypt checks wait in a short newest-first queue.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import os
import resource
import select
import socket
import ssl
import statistics
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import bcrypt
import pytest

from iceprod_exporter.exposition.formats import Format
from iceprod_exporter.http.logins import Authenticator, LoginChecks
from iceprod_exporter.http.server import HttpServer
from iceprod_exporter.http.web_config import LiveWebConfig
from iceprod_exporter.model.status import Status

from .http_support import Crowd, Pki, client_context, demo, make_pki, request
from .support import wait_for

BODY = b"iceprod_up 1\n"
PASSWORD = "scrape-pass-0xBEEF"


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


def still_open(socks: Sequence[socket.socket]) -> list[bool]:
    """Which of ``socks`` the server keeps open (it sends nothing on them but its close)."""
    readable, _, _ = select.select(socks, [], [], 0.05)
    return [s not in readable for s in socks]


# --------------------------------------------------------------------------- request heads


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


@pytest.mark.parametrize("case", HEADS)
def test_a_bad_head_gets_its_status_at_once(case: str) -> None:
    data, status = HEADS[case]
    with serving() as server:
        response, took = exchange(server.port, data)
        assert status_of(response) == status, response[:100]
        assert took < 1.0, f"{case}: answered after {took:.2f}s"
        tornados = case == "a header line without a colon"  # its own bare answer, after the head
        assert tornados or b"\r\nConnection: close\r\n" in response
        if len(data) > 1000:  # read under the limits, the rest drained: no reset, nothing kept
            wait_for(lambda: server.connections == 0, 2, "closed", interval=0.01)
        assert request("127.0.0.1", server.port, "/healthz").status == 200
        if not tornados:
            counted = server.registry.get_sample_value(
                "iceprod_exporter_http_requests_total", {"handler": "other", "code": str(status)}
            )
            assert counted == 1


def test_a_head_cut_off_before_its_blank_line_gets_408_at_the_deadline() -> None:
    with serving(header_timeout=0.2) as server:
        response, took = exchange(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        assert status_of(response) == 408
        assert 0.15 < took < 1.0


def test_a_connection_that_sends_nothing_is_closed_silently_at_the_deadline() -> None:
    with serving(header_timeout=0.2) as server:
        response, took = exchange(server.port, b"")
        assert response == b"" and 0.15 < took < 1.0


def test_a_kept_alive_connection_waits_the_idle_time_then_the_header_deadline() -> None:
    with serving(header_timeout=0.1, idle_timeout=5) as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        with sock:
            for _ in range(2):  # the second request after longer than the header deadline
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
                time.sleep(0.15)
            # a request begun: the header deadline runs from its first byte
            sock.sendall(b"G")
            started = time.monotonic()
            sock.settimeout(2)
            assert sock.recv(65536).startswith(b"HTTP/1.1 408 ")
            assert 0.08 < time.monotonic() - started < 1.0


def test_leading_empty_lines_are_ignored() -> None:
    with serving() as server:
        response, _ = exchange(server.port, b"\r\n\r\nGET /healthz HTTP/1.0\r\n\r\n")
        assert status_of(response) == 200


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_over_tls_a_bad_head_gets_its_status_and_a_silent_client_is_closed(pki: Pki) -> None:
    path = pki.directory / "web-clients.yml"
    path.write_text(
        f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n"
    )
    with serving(web_config=LiveWebConfig.from_file(path), header_timeout=0.3) as server:
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
            client_context(pki).wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(HEADS["60 KB query string"][0])
            received = b""
            with contextlib.suppress(ssl.SSLEOFError):  # our side ends TCP only, after the answer
                while chunk := tls.recv(65536):
                    received += chunk
        assert status_of(received) == 414
        # connected, never began its handshake: closed at the header deadline
        response, took = exchange(server.port, b"")
        assert response == b"" and 0.25 < took < 1.5
        r = request("localhost", server.port, "/healthz", context=client_context(pki))
        assert r.status == 200


# --------------------------------------------------------------------------- connection cap


def test_at_the_cap_the_longest_waiting_new_connection_makes_room() -> None:
    with serving(max_connections=5) as server:
        port = server.port
        kept = socket.create_connection(("127.0.0.1", port))  # a scraper between two scrapes
        kept.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert kept.recv(65536).startswith(b"HTTP/1.1 200 OK")
        new = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        new.append(socket.create_connection(("127.0.0.1", port)))  # half-sent: waiting too
        new[-1].sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        try:
            wait_for(lambda: server.connections == 5, 5, "5 connections", interval=0.01)
            # the oldest is the kept-alive one: a connection never answered goes first
            assert request("127.0.0.1", port, timeout=2).status == 200
            assert still_open([kept, *new]) == [True, False, True, True, True]
            wait_for(lambda: server.connections == 4, 5, "the scrape's connection closed", 0.01)
            new.append(socket.create_connection(("127.0.0.1", port)))
            wait_for(lambda: server.connections == 5, 5, "5 connections again", interval=0.01)
            assert request("127.0.0.1", port, timeout=2).status == 200
            assert still_open([kept, *new]) == [True, False, False, True, True, True]
            # once only kept-alive connections wait, the longest-waiting of them goes
            for sock in new[2:]:
                sock.close()
            wait_for(lambda: server.connections == 1, 5, "the new ones closed", interval=0.01)
            others = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
            for sock in others:
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
            assert request("127.0.0.1", port, timeout=2).status == 200
            assert still_open([kept, *others]) == [False, True, True, True, True]
            for sock in others:
                sock.close()
        finally:
            kept.close()
            for sock in new:
                sock.close()


def test_a_connection_with_its_request_in_is_closed_for_room_only_past_the_grace() -> None:
    source = Fixed()
    with serving(source, max_connections=2, busy_grace=0.3) as server:
        source.hold.clear()  # identity bodies wait: both requests stay in
        busy = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
        try:
            busy[0].sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            wait_for(lambda: server.answering == 1, 5, "the first request in", 0.01)
            busy[1].sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            wait_for(lambda: server.answering == 2, 5, "the second request in", 0.01)
            extra = socket.create_connection(("127.0.0.1", server.port), timeout=3)
            with extra:
                assert extra.recv(10) == b"", "every answer under way: the new one is closed"
            time.sleep(0.3)  # past the grace: the oldest answer is given up for the new one
            gzipped = {"Accept-Encoding": "gzip"}
            assert request("127.0.0.1", server.port, headers=gzipped, timeout=2).status == 200
            assert still_open(busy) == [False, True]
            source.hold.set()
            busy[1].settimeout(5)
            assert busy[1].recv(65536).startswith(b"HTTP/1.1 200 OK")
        finally:
            source.hold.set()
            for sock in busy:
                sock.close()


# --------------------------------------------------------------------------- bcrypt queue


class GatedAuth(Authenticator):
    """Checks that wait for the test and record their order; "good" is the password."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Semaphore(0)
        self.order: list[str] = []

    def check(self, users: Mapping[str, bytes], user: str, password: str) -> bool:
        if self.known(users, user, password) is None:
            self.gate.acquire(timeout=5)
            self.order.append(password)
        return super().check(users, user, password)


def run_checks(
    limit: int, logins: Sequence[tuple[str, str, str]]
) -> tuple[list[bool | None], list[str]]:
    """(peer, password, then hangs up) logins 10 ms apart, the first checked at once, then all.

    The results in the order of ``logins``, and the passwords in the order they were checked.
    """
    users = {"u": bcrypt.hashpw(b"good", bcrypt.gensalt(4))}

    async def scenario() -> list[bool | None]:
        checks = LoginChecks(auth, limit)
        gone: set[str] = set()
        tasks = []
        for peer, password, hangs_up in logins:
            gone_yet = partial(set.__contains__, gone, password)
            login = (users, "u", password)
            tasks.append(asyncio.ensure_future(checks.check(login, peer, gone_yet)))
            await asyncio.sleep(0.01)
            gone.add(hangs_up)
        for _ in logins:
            auth.gate.release()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 5)
        again = await checks.check((users, "u", "p1"), "a", lambda: False)  # no check
        checks.shutdown()
        return [*results, again]

    auth = GatedAuth()
    return asyncio.run(scenario()), auth.order


def test_bcrypt_checks_first_come_bounded_skipping_the_gone_and_the_known() -> None:
    results, order = run_checks(
        3,
        [
            ("a", "p1", ""),  # checked at once
            ("a", "p2", ""),
            ("a", "p3", ""),
            ("a", "p4", ""),
            ("a", "p5", "p2"),  # three waiting, all its address's: 503; then p2 hangs up
            ("a", "good", "p3"),  # room, once p2 is dropped; then p3 hangs up: skipped
        ],
    )
    assert order == ["p1", "p4", "good"]
    assert results == [False, None, None, False, None, True, False]  # p1 again: remembered


def test_bcrypt_checks_take_turns_by_client_address() -> None:
    results, order = run_checks(
        3,
        [
            ("a", "p1", ""),
            ("a", "p2", ""),
            ("a", "p3", ""),
            ("a", "p4", ""),
            ("b", "good", ""),  # full: a's newest (p4) makes room for it
            ("c", "q1", ""),  # full: a's newest again (p3); c's turn comes after b's
        ],
    )
    # one check of each other address before "good": p2, a's turn being first
    assert order == ["p1", "p2", "good", "q1"]
    assert results == [False, False, None, None, True, False, False]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@dataclass(frozen=True)
class Storm:
    """50 clients sending wrong passwords, and when the correct first login comes."""

    patience: float  # a client waits for its answer up to
    new_passwords: bool  # a new wrong password each time, else one per client
    host: str = "127.0.0.1"  # the clients' address; the login comes from 127.0.0.1
    answered_before: int = 0  # the login comes 2 s in and once this many clients had an answer
    login_within: float = 1.0


STORMS = {
    # gone after 1 s: skipped; the login waits for the checks queued before it
    "impatient clients": Storm(1.0, True, login_within=2.0),
    # 50 waiting on the login's own host: it waits its turn, 50 checks
    "patient clients": Storm(30.0, True, login_within=10.0),
    # from another host: the login waits one check, addresses taking turns
    "patient clients elsewhere": Storm(30.0, True, host="127.0.0.2"),
    # one wrong password a client: once each was checked (50 checks), they cost nothing
    "a stale password": Storm(30.0, False, answered_before=50),
}


@pytest.mark.integration  # 5-15 s each: a bcrypt storm of 50 clients
@pytest.mark.parametrize("storm", STORMS)
def test_a_bcrypt_storm_neither_starves_a_login_nor_outlives_its_clients(
    tmp_path: Path, storm: str
) -> None:
    spec = STORMS[storm]
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()  # ~0.1 s a check
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  prometheus: {hashed}\n")
    with serving(web_config=LiveWebConfig.from_file(path)) as server:
        port, stop = server.port, threading.Event()
        sent = [0]
        answered: set[int] = set()  # clients that had an answer

        async def attacker(n: int) -> None:
            while True:
                sent[0] += 1
                password = f"wrong-{n}-{sent[0]}" if spec.new_passwords else f"wrong-{n}"
                auth = _b64(f"prometheus:{password}")
                try:
                    reader, writer = await asyncio.open_connection(
                        "127.0.0.1", port, local_addr=(spec.host, 0)
                    )
                except OSError:
                    continue
                try:
                    writer.write(f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}"
                                 "\r\n\r\n".encode())  # fmt: skip
                    with contextlib.suppress(asyncio.TimeoutError, OSError):
                        if await asyncio.wait_for(reader.read(1000), spec.patience):
                            answered.add(n)
                finally:
                    writer.close()

        async def attackers() -> None:
            tasks = [asyncio.ensure_future(attacker(n)) for n in range(50)]
            while not stop.is_set():
                await asyncio.sleep(0.05)
            for task in tasks:  # every client hangs up at once
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        thread = threading.Thread(target=asyncio.run, args=(attackers(),))
        thread.start()
        try:
            time.sleep(2)  # the storm is on: the queue holds what it can
            wait_for(lambda: len(answered) >= spec.answered_before, 60, "the clients answered")
            headers = {"Authorization": "Basic " + _b64(f"prometheus:{PASSWORD}")}
            started = time.monotonic()
            first = request("127.0.0.1", port, headers=headers, timeout=15)
            login = time.monotonic() - started
            assert first.status == 200
            time.sleep(1)
        finally:
            stop.set()
            thread.join(10)
        time.sleep(0.2)  # the check running when the clients went
        cpu = time.process_time()
        time.sleep(2)
        after = time.process_time() - cpu
        checked = server.registry.get_sample_value("iceprod_exporter_http_auth_failures_total")
        dropped = server.registry.get_sample_value(
            "iceprod_exporter_http_requests_total", {"handler": "/metrics", "code": "503"}
        )
        print(
            f"\nbcrypt storm of 50 clients, {storm}: {sent[0]} wrong logins sent, "
            f"{checked:.0f} refused, {dropped or 0:.0f} dropped unchecked (gone or queue full); "
            f"first login during it {login * 1000:.0f} ms; CPU in the 2 s after it {after:.2f} s"
        )
        assert login < spec.login_within, f"a correct first login took {login:.2f}s in the storm"
        assert after < 0.3, f"{after:.2f}s of CPU in the 2 s after the storm"


# --------------------------------------------------------------------------- 2,000 bad clients


@pytest.mark.integration  # about 15 s: 2,000 connections against the real serving process
def test_prometheus_is_served_past_1000_slow_and_1000_idle_connections(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))  # 2,000 client sockets
    try:
        with demo(tmp_path, open_files=4096) as exporter:  # room for the whole cap of 1,000
            port = exporter.port
            kept = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            with Crowd(exporter.port, slow=1000, idle=1000, seconds=60) as crowd:
                wait_for(lambda: crowd.opened >= 2000, 20, "2,000 crowd connections")
                time.sleep(1)  # the cap is reached: every new connection makes room
                results = {
                    # as Prometheus scrapes: one kept-alive connection
                    "one kept-alive connection": scrapes(port, 30, kept),
                    # as after a restart, or from a second Prometheus: new connections
                    "new connections": scrapes(port, 30),
                }
                closed = crowd.closed_by_server
            kept.close()
            for how, (latencies, statuses) in results.items():
                print(
                    f"\n1,000 slow + 1,000 idle connections, scrapes on {how}: "
                    f"{statuses.count(200)}/30 answered; {summary(latencies)}; "
                    f"the server closed {closed} crowd connections"
                )
            for latencies, statuses in results.values():
                assert statuses == [200] * 30, statuses
                assert max(latencies) < 1.0
            assert exporter.proc.poll() is None
            text = exporter.log.read_text()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert "Traceback" not in text, text[-3000:]
    assert '"level": "error"' not in text, text[-3000:]


def scrapes(
    port: int, count: int, kept: http.client.HTTPConnection | None = None
) -> tuple[list[float], list[int | str]]:
    """``count`` gzip scrapes 0.1 s apart, on ``kept`` or each on a new connection."""
    latencies: list[float] = []
    statuses: list[int | str] = []
    for _ in range(count):
        started = time.monotonic()
        conn = kept or http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
        except OSError as exc:
            statuses.append(repr(exc))
            conn.close()  # http.client connects again on the next request
        finally:
            if kept is None:
                conn.close()
        latencies.append(time.monotonic() - started)
        time.sleep(0.1)
    return latencies, statuses


def summary(latencies: list[float]) -> str:
    """p50, p99 and max in milliseconds."""
    p99 = statistics.quantiles(latencies, n=100, method="inclusive")[98]
    return (
        f"p50 {statistics.median(latencies) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms"
    )
