"""Crowds of hostile clients, over TLS and in thousands: Prometheus is still served.

Nothing a crowd sends or withholds may keep Prometheus from its scrape: 1,000 slow and 1,000
idle connections, a bcrypt storm, bad heads over TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import resource
import socket
import ssl
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest

from iceprod_exporter.http.web_config import LiveWebConfig
from tests.support.exporter import wait_for
from tests.support.http import Crowd, Pki, client_context, demo, request
from tests.support.http_clients import (
    HEADS,
    Fixed,
    exchange,
    serving,
    status_of,
    still_open,
)
from tests.support.polled_http import PASSWORD, b64


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
                auth = b64(f"prometheus:{password}")
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
            headers = {"Authorization": "Basic " + b64(f"prometheus:{PASSWORD}")}
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
