"""The HTTP server over real sockets: methods, negotiation, gzip, binding, basic auth, stop.

Everything goes through :class:`iceprod_exporter.http.server.HttpServer` on a real port,
serving an exporter polled once against the simulator.
"""

from __future__ import annotations

import gzip
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from iceprod_exporter.daemon.exporter import Exporter
from iceprod_exporter.exposition.formats import Format
from iceprod_exporter.http.negotiation import accepts_gzip, negotiate
from iceprod_exporter.http.server import BindError, HttpServer
from tests.support.exporter import openmetrics_families
from tests.support.http import (
    bcrypt_hash,
    request,
)
from tests.support.polled_http import PASSWORD, b64, serve, web_config


@pytest.fixture()
def http(polled: Exporter) -> Iterator[HttpServer]:
    server = serve(polled)
    yield server
    server.stop()


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


def test_basic_auth_accepts_the_password_and_counts_failures(
    polled: Exporter, tmp_path: Path
) -> None:
    hashed = bcrypt_hash(PASSWORD)
    web = web_config(tmp_path, f"basic_auth_users:\n  prometheus: {hashed}\n")
    server = serve(polled, web_config=web)
    registry = server.registry
    try:
        good = "Basic " + b64(f"prometheus:{PASSWORD}")
        for _ in range(3):  # the 2nd and 3rd hit the cache
            assert request("127.0.0.1", server.port, headers={"Authorization": good}).status == 200
        for header in ("Basic " + b64("prometheus:wrong"), "Basic " + b64("nobody:x"),
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
