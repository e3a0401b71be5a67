"""The HTTP server with the real tools: TLS by openssl, Prometheus scraping, Chromium reading.

Certificates are made by the real ``openssl``; the scraping Prometheus and the browser that
renders the landing page are the real ones.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from iceprod_exporter.daemon.exporter import Exporter
from iceprod_exporter.http.server import HttpServer
from iceprod_exporter.model.status import Status
from tests.support.exporter import wait_for
from tests.support.http import (
    Pki,
    bcrypt_hash,
    browse,
    client_context,
    demo,
    make_cert,
    peer_certificate,
    request,
)
from tests.support.monitoring import prom_query, start_prometheus
from tests.support.polled_http import PASSWORD, b64, serve, web_config


def tls_yaml(pki: Pki, auth: str = "NoClientCert", extra: str = "") -> str:
    ca = f"\n  client_ca_file: {pki.ca.name}" if auth != "NoClientCert" else ""
    return (
        f"tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        f"  client_auth_type: {auth}{ca}\n{extra}"
    )


def test_hundreds_of_idle_and_half_sent_connections_do_not_delay_scrapes(
    tmp_path: Path,
) -> None:
    held: list[socket.socket] = []
    with demo(tmp_path, open_files=1024) as exporter:
        port = exporter.port
        try:
            for i in range(500):
                sock = socket.create_connection(("127.0.0.1", port))
                if i % 3 == 1:  # a request that never ends its headers (slowloris)
                    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                elif i % 3 == 2:  # a body that never comes
                    sock.sendall(
                        b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 4000\r\n\r\nab"
                    )
                held.append(sock)
            # the connections are held by the serving process (until the header deadline)
            fd_dir = f"/proc/{exporter.serving_pid()}/fd"

            def accepted() -> int | None:
                fds = len(os.listdir(fd_dir))
                return fds if fds >= 500 else None

            assert wait_for(accepted, 5, "500 connections accepted", interval=0.05) < 1024
            # garbage, a TLS hello to a plain port, oversized headers: answered, no trace
            for junk in (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", b"BLAH\r\n\r\n",
                         b"GET / HTTP/1.1\r\nX: " + b"a" * 40_000 + b"\r\n\r\n"):  # fmt: skip
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.sendall(junk)
                    s.shutdown(socket.SHUT_WR)
                    assert s.recv(1000).startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 431 ")), junk
            slowest = 0.0
            for _ in range(30):
                started = time.monotonic()
                r = request("127.0.0.1", port, headers={"Accept-Encoding": "gzip"}, timeout=5)
                slowest = max(slowest, time.monotonic() - started)
                assert r.status == 200
                time.sleep(0.05)
            assert slowest < 1.0, f"slowest scrape {slowest:.2f}s with 500 bad connections"
            assert exporter.proc.poll() is None
            time.sleep(0.5)
            # read before shutdown: what clients caused, not how the process ends
            text = exporter.log.read_text()
        finally:
            for sock in held:
                sock.close()
    assert "Traceback" not in text, text[-3000:]
    assert '"level": "error"' not in text, text[-3000:]


def test_tls_serves_https_with_the_configured_headers(polled: Exporter, pki: Pki) -> None:
    web = web_config(
        pki.directory,
        tls_yaml(pki) + "http_server_config:\n  headers:\n    X-Frame-Options: deny\n",
    )
    server = serve(polled, web_config=web)
    try:
        assert server.scheme == "https"
        r = request("localhost", server.port, context=client_context(pki))
        assert r.status == 200 and b"iceprod_up" in r.body
        assert r.headers["x-frame-options"] == "deny"
        with pytest.raises(ssl.SSLError):  # an untrusted CA fails the handshake
            request("127.0.0.1", server.port, context=ssl.create_default_context())
    finally:
        server.stop()


def test_require_and_verify_client_cert_refuses_a_client_without_one(
    polled: Exporter, pki: Pki
) -> None:
    web = web_config(pki.directory, tls_yaml(pki, "RequireAndVerifyClientCert"))
    server = serve(polled, web_config=web)
    try:
        ok = request("localhost", server.port, context=client_context(pki, client_cert=True))
        assert ok.status == 200
        with pytest.raises((ssl.SSLError, ConnectionError)):
            request("localhost", server.port, context=client_context(pki))
        assert request("localhost", server.port, "/healthz", context=client_context(pki, True))
    finally:
        server.stop()


def test_a_rotated_certificate_is_served_without_a_restart(polled: Exporter, pki: Pki) -> None:
    directory = pki.directory / "rotate"
    directory.mkdir()
    for name in ("server.crt", "server.key"):
        (directory / name).write_bytes((pki.directory / name).read_bytes())
    web = web_config(directory, tls_yaml(pki))
    server = serve(polled, web_config=web)
    try:
        before = peer_certificate("localhost", server.port, pki)
        make_cert(pki.directory, "server2", pki.ca, pki.directory / "ca.key", server=True)
        time.sleep(0.05)
        # cert-manager style: new files moved into place
        for src, dst in (("server2.key", "server.key"), ("server2.crt", "server.crt")):
            tmp = directory / (dst + ".new")
            tmp.write_bytes((pki.directory / src).read_bytes())
            os.replace(tmp, directory / dst)
        wait_for(
            lambda: peer_certificate("localhost", server.port, pki) != before,
            10,
            "the new certificate",
        )
        r = request("localhost", server.port, context=client_context(pki))
        assert r.status == 200
    finally:
        server.stop()


def test_prometheus_scrapes_over_https_with_basic_auth_and_client_certs(
    polled: Exporter, pki: Pki, tmp_path: Path
) -> None:
    hashed = bcrypt_hash(PASSWORD)
    web = web_config(
        pki.directory,
        tls_yaml(pki, "RequireAndVerifyClientCert")
        + f"basic_auth_users:\n  prometheus: {hashed}\n",
    )
    server = serve(polled, web_config=web)
    try:
        target = f"localhost:{server.port}"
        tls = (
            f"    tls_config:\n      ca_file: {pki.ca}\n      cert_file: {pki.client_cert}\n"
            f"      key_file: {pki.client_key}\n"
        )
        prom_config = tmp_path / "prometheus.yml"
        prom_config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n"
            f"  - job_name: good\n    scheme: https\n{tls}"
            f"    basic_auth:\n      username: prometheus\n      password: {PASSWORD}\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n"
            f"  - job_name: wrong-password\n    scheme: https\n{tls}"
            f"    basic_auth:\n      username: prometheus\n      password: nope\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n"
            f"  - job_name: no-client-cert\n    scheme: https\n"
            f"    tls_config:\n      ca_file: {pki.ca}\n"
            f"    basic_auth:\n      username: prometheus\n      password: {PASSWORD}\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n"
        )
        prometheus = start_prometheus(prom_config, tmp_path)
        try:

            def ups() -> dict[str, float] | None:
                result = prom_query(prometheus.url, "up")
                found = {r["metric"]["job"]: float(r["value"][1]) for r in result}
                return found if len(found) == 3 else None

            up = wait_for(ups, 60, "three targets scraped", diagnose=prometheus.log_tail)
            assert up == {"good": 1.0, "wrong-password": 0.0, "no-client-cert": 0.0}
            # gzip with two members (self-metrics + snapshot): Prometheus must read both
            infos = prom_query(prometheus.url, 'count(iceprod_dataset_info{job="good"})')
            assert int(infos[0]["value"][1]) == len(polled.poller.snapshot.datasets)
            own = prom_query(prometheus.url, 'iceprod_exporter_build_info{job="good"}')
            assert own, "self-metrics of the first gzip member"
        finally:
            prometheus.stop()
    finally:
        server.stop()


def test_landing_page_in_headless_chromium(polled: Exporter) -> None:
    server = serve(polled)
    try:
        page = browse(f"http://127.0.0.1:{server.port}/")
    finally:
        server.stop()
    assert not page.errors, page.errors
    assert "IceProd exporter" in page.text
    snapshot = polled.poller.snapshot
    assert f"{len(snapshot.watched())}" in page.text
    assert "poll cycles" in page.text and "ok: first poll succeeded" in page.text


def test_landing_page_renders_nested_details_escaped(polled: Exporter) -> None:
    details = {
        "version": "<b>1</b>",
        "last polls": [
            {"started": "12:00:00", "duration": 3.25, "requests": 1748, "failures": 0, "up": True},
            {"started": "12:01:00", "duration": 4.5, "requests": 17, "failures": 9, "up": False},
        ],
        "last error by endpoint": {
            "/datasets": {"reason": "timeout", "status": None, "when": "12:01:03"},
        },
        "token": {"state": "<script>alert(1)</script>"},
        "datasets by status": {"processing": 41, "complete": 7},
    }

    def status() -> Status:
        return Status(True, "ok", False, "waiting", details)

    server = HttpServer(polled.metrics, status, "127.0.0.1", 0)
    server.start()
    try:
        page = browse(f"http://127.0.0.1:{server.port}/")
    finally:
        server.stop()
    assert not page.errors, page.errors
    assert "<script>alert(1)</script>" in page.text, "shown as text"
    assert "<script>alert" not in page.html.replace("&lt;script&gt;", "")
    for shown in ("1748", "3.25", "timeout", "41", "processing", "<b>1</b>", "waiting"):
        assert shown in page.text, shown
    assert page.html.count("<th>started</th>") == 1, "one column per key"


def test_concurrent_scrapes_never_wait_on_a_bcrypt_flood(polled: Exporter, tmp_path: Path) -> None:
    import bcrypt

    slow = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(12)).decode()  # ~0.25 s a check
    web = web_config(tmp_path, f"basic_auth_users:\n  prometheus: {slow}\n")
    server = serve(polled, web_config=web)
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            request("127.0.0.1", server.port, headers={"Authorization": "Basic " + b64("a:b")})

    threads = [threading.Thread(target=flood) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.5)
        worst = 0.0
        for _ in range(10):
            started = time.monotonic()
            assert request("127.0.0.1", server.port, "/healthz").status == 200
            worst = max(worst, time.monotonic() - started)
        assert worst < 0.2, f"health check took {worst:.2f}s during a bcrypt flood"
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        server.stop()
