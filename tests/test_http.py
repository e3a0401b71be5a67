"""The HTTP server over real sockets: semantics, negotiation, TLS, basic auth, abuse, Prometheus.

Everything goes through :class:`iceprod_exporter.http.server.HttpServer` on a real port;
certificates are made by the real ``openssl``, the scraping Prometheus and the browser are the
real ones.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from iceprod_exporter import config
from iceprod_exporter.daemon.exporter import Exporter
from iceprod_exporter.exposition.formats import Format
from iceprod_exporter.http.negotiation import accepts_gzip, negotiate
from iceprod_exporter.http.server import BindError, HttpServer
from iceprod_exporter.http.web_config import LiveWebConfig
from iceprod_exporter.model.status import Status
from iceprod_simulator import SimulatedIceProd, build_store

from .http_support import (
    Pki,
    bcrypt_hash,
    browse,
    client_context,
    demo,
    make_cert,
    make_pki,
    peer_certificate,
    request,
)
from .monitoring_support import prom_query, start_prometheus
from .support import openmetrics_families, wait_for

DATASETS = 6
PASSWORD = "scrape-pass-0xBEEF"


@pytest.fixture(scope="module")
def polled() -> Iterator[Exporter]:
    """An exporter that has polled a simulated IceProd once (no HTTP server of its own)."""
    with SimulatedIceProd(build_store(datasets=DATASETS, seed=3)) as simulator:
        values = {"api_url": simulator.url, "token": "t", "retries": "0", "timeout": "5"}
        exporter = Exporter(config.validate(values))
        assert asyncio.run(exporter.once()).up
        yield exporter


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def serve(e: Exporter, address: str = "127.0.0.1", **kwargs: object) -> HttpServer:
    server = HttpServer(e.metrics, e.status, address, 0, **kwargs)  # type: ignore[arg-type]
    server.start()
    return server


@pytest.fixture()
def http(polled: Exporter) -> Iterator[HttpServer]:
    server = serve(polled)
    yield server
    server.stop()


def web_config(tmp: Path, text: str) -> LiveWebConfig:
    path = tmp / "web.yml"
    path.write_text(text)
    return LiveWebConfig.from_file(path)


# --------------------------------------------------------------------------- semantics


def test_methods_other_than_get_and_head_are_405_with_allow(http: HttpServer) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        r = request("127.0.0.1", http.port, "/metrics", method)
        assert r.status == 405, method
        assert r.headers["allow"] == "GET, HEAD"


def test_head_has_no_body_but_the_content_length(http: HttpServer) -> None:
    get = request("127.0.0.1", http.port, "/healthz")
    head = request("127.0.0.1", http.port, "/healthz", "HEAD")
    assert head.status == 200 and head.body == b""
    assert int(head.headers["content-length"]) == len(get.body) > 0
    head = request("127.0.0.1", http.port, "/metrics", "HEAD")
    assert head.body == b"" and int(head.headers["content-length"]) > 10_000


def test_odd_accept_headers_fall_back_to_text(http: HttpServer) -> None:
    for accept in (
        "application/openmetrics-text; version=abc",
        "application/openmetrics-text; version=2.0.0",
        ";;;,,=q=",
        "@@ garbage/\xff; q=xyz, */*;q=nan",
        "application/openmetrics-text;q=0,text/plain;q=0.5",
    ):
        r = request("127.0.0.1", http.port, headers={"Accept": accept})
        assert r.status == 200, accept
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4"), accept
        names = {f.name for f in text_string_to_metric_families(r.body.decode())}
        assert "iceprod_up" in names


def test_openmetrics_has_one_eof_at_the_end(http: HttpServer) -> None:
    accept = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3"
    r = request("127.0.0.1", http.port, headers={"Accept": accept})
    assert r.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    text = r.body.decode()
    assert text.count("# EOF") == 1 and text.endswith("# EOF\n")
    names = {f.name for f in openmetrics_families(text)}
    assert {"iceprod_up", "iceprod_dataset_jobs", "iceprod_exporter_api_requests"} <= names


def test_gzip_honours_q_values(http: HttpServer) -> None:
    plain = request("127.0.0.1", http.port, headers={"Accept-Encoding": "gzip;q=0, identity"})
    assert "content-encoding" not in plain.headers
    assert b"iceprod_up" in plain.body
    zipped = request("127.0.0.1", http.port, headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert int(zipped.headers["content-length"]) == len(zipped.body)
    text = gzip.decompress(zipped.body).decode()  # two members: self-metrics + snapshot
    families = {f.name for f in text_string_to_metric_families(text)}
    assert {"iceprod_up", "iceprod_dataset_info", "iceprod_exporter_api_requests"} <= families
    assert accepts_gzip("*;q=0.1") and not accepts_gzip("*;q=0") and not accepts_gzip("br")
    assert negotiate("application/openmetrics-text;version=1.0.0") == "openmetrics"


def test_unknown_paths_are_404_and_every_answer_has_a_length(http: HttpServer) -> None:
    for path in ("/nope", "/metrics/x", "/%00", "/" + "a" * 2000):
        r = request("127.0.0.1", http.port, path)
        assert r.status == 404, path
        assert int(r.headers["content-length"]) == len(r.body)
    for path in ("/", "/healthz", "/readyz", "/metrics"):
        r = request("127.0.0.1", http.port, path)
        assert r.status == 200 and int(r.headers["content-length"]) == len(r.body)
        assert "server" not in r.headers


def test_scrape_over_ipv6_and_dual_stack(polled: Exporter) -> None:
    for address in ("::1", "[::1]"):
        server = serve(polled, address)
        try:
            assert server.addresses[0][0] == "::1"
            assert request("::1", server.port).status == 200
        finally:
            server.stop()
    server = serve(polled, "::")
    try:
        hosts = {host for host, _ in server.addresses}
        assert hosts == {"0.0.0.0", "::"}
        assert request("::1", server.port).status == 200
        assert request("127.0.0.1", server.port).status == 200
    finally:
        server.stop()
    server = serve(polled, "localhost")
    try:
        assert request("127.0.0.1", server.port).status == 200
    finally:
        server.stop()


def test_bind_failures_name_the_setting(polled: Exporter) -> None:
    server = serve(polled)
    try:
        with pytest.raises(BindError) as busy:
            HttpServer(polled.metrics, polled.status, "127.0.0.1", server.port)
        assert busy.value.setting == "port"
    finally:
        server.stop()
    for address in ("192.0.2.1", "no-such-host.invalid"):
        with pytest.raises(BindError) as bad:
            HttpServer(polled.metrics, polled.status, address, 0)
        assert bad.value.setting == "listen_address", address


def test_stop_waits_for_a_slow_reader_then_closes(polled: Exporter) -> None:
    server = serve(polled)
    idle = socket.create_connection(("127.0.0.1", server.port))
    started = time.monotonic()
    server.stop(grace=1)
    assert time.monotonic() - started < 5
    idle.settimeout(3)
    assert idle.recv(10) == b"", "open connections are closed on stop"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2)


# --------------------------------------------------------------------------- bounded clients


@pytest.mark.integration  # 5 s: 500 connections
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


# --------------------------------------------------------------------------- TLS and auth


def tls_yaml(pki: Pki, auth: str = "NoClientCert", extra: str = "") -> str:
    ca = f"\n  client_ca_file: {pki.ca.name}" if auth != "NoClientCert" else ""
    return (
        f"tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        f"  client_auth_type: {auth}{ca}\n{extra}"
    )


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


def test_basic_auth_accepts_the_password_and_counts_failures(
    polled: Exporter, tmp_path: Path
) -> None:
    hashed = bcrypt_hash(PASSWORD)
    web = web_config(tmp_path, f"basic_auth_users:\n  prometheus: {hashed}\n")
    server = serve(polled, web_config=web)
    registry = server.registry
    try:
        good = "Basic " + _b64(f"prometheus:{PASSWORD}")
        for _ in range(3):  # the 2nd and 3rd hit the cache
            assert request("127.0.0.1", server.port, headers={"Authorization": good}).status == 200
        for header in ("Basic " + _b64("prometheus:wrong"), "Basic " + _b64("nobody:x"),
                       "Basic !!!", "Bearer abc", None):  # fmt: skip
            r = request(
                "127.0.0.1", server.port, "/", headers={"Authorization": header} if header else {}
            )
            assert r.status == 401, header
            assert r.headers["www-authenticate"] == 'Basic realm="iceprod-exporter"'
        assert registry.get_sample_value("iceprod_exporter_http_auth_failures_total") == 5
        # probes answer without credentials
        assert request("127.0.0.1", server.port, "/healthz").status == 200
        assert request("127.0.0.1", server.port, "/readyz").status == 200
        assert (
            registry.get_sample_value(
                "iceprod_exporter_http_requests_total", {"handler": "/metrics", "code": "200"}
            )
            == 3
        )
    finally:
        server.stop()


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


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


# --------------------------------------------------------------------------- real Prometheus


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


# --------------------------------------------------------------------------- landing page


@pytest.mark.integration  # chromium
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


@pytest.mark.integration  # chromium
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


@pytest.mark.integration  # about 1 s of bcrypt on every core
def test_concurrent_scrapes_never_wait_on_a_bcrypt_flood(polled: Exporter, tmp_path: Path) -> None:
    import bcrypt

    slow = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(12)).decode()  # ~0.25 s a check
    web = web_config(tmp_path, f"basic_auth_users:\n  prometheus: {slow}\n")
    server = serve(polled, web_config=web)
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            request("127.0.0.1", server.port, headers={"Authorization": "Basic " + _b64("a:b")})

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


def test_an_identity_scrape_decompresses_in_a_worker_and_gzip_scrapes_go_on(
    polled: Exporter,
) -> None:
    """Identity bodies are decompressed per request: never on the IOLoop that serves the rest."""
    source = polled.metrics
    entered, release = threading.Event(), threading.Event()

    class SlowIdentity:
        """The exporter's source; its identity bytes take until the test releases them."""

        def has_snapshot(self) -> bool:
            return source.has_snapshot()

        def wait_for_snapshot(self) -> None:
            source.wait_for_snapshot()

        def chunks(self, fmt: Format, gzipped: bool = False) -> Sequence[bytes]:
            if not gzipped:
                entered.set()
                release.wait(10)
            return source.chunks(fmt, gzipped)

    server = HttpServer(SlowIdentity(), polled.status, "127.0.0.1", 0)
    server.start()
    plain: list[bytes] = []
    reader = threading.Thread(target=lambda: plain.append(request("127.0.0.1", server.port).body))
    try:
        reader.start()
        assert entered.wait(5), "the identity scrape reached its decompression"
        zipped = request("127.0.0.1", server.port, headers={"Accept-Encoding": "gzip"}, timeout=3)
        assert zipped.status == 200 and not plain, "gzip answered while identity was held"
        release.set()
        reader.join(10)
        assert plain and b"iceprod_up 1" in plain[0]
        assert b"iceprod_up 1" in gzip.decompress(zipped.body)
    finally:
        release.set()
        server.stop()
