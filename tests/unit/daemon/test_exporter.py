"""Health, readiness and the landing page, from the exporter's in-memory state."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client.parser import text_string_to_metric_families

from iceprod_exporter import config
from iceprod_exporter.daemon.exporter import Exporter
from iceprod_exporter.http.server import HttpServer
from iceprod_simulator import SimulatedIceProd, build_store
from tests.support.clock import FakeClock
from tests.support.http import request


def exporter(clock: Callable[[], float], **settings: str) -> Exporter:
    values = {
        "api_url": "http://127.0.0.1:9",
        "token": "t",
        "poll_interval": "10",
        "timeout": "5",
        "retries": "0",
        **settings,
    }
    return Exporter(config.validate(values), clock=clock)


@contextmanager
def served(e: Exporter) -> Iterator[HttpServer]:
    """The exporter's real HTTP server on a free port of 127.0.0.1."""
    server = HttpServer(e.metrics, e.status, "127.0.0.1", 0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def call(server: HttpServer, path: str) -> tuple[str, bytes]:
    """GET ``path`` over real HTTP: (status line, body)."""
    r = request("127.0.0.1", server.port, path)
    return f"{r.status} {_REASONS[r.status]}", r.body


_REASONS = {200: "OK", 503: "Service Unavailable", 404: "Not Found"}


def test_liveness_fails_when_the_poller_stalls() -> None:
    clock = FakeClock(5_000.0)
    e = exporter(clock)
    with served(e) as app:
        _check_liveness(e, app, clock)


def _check_liveness(e: Exporter, app: HttpServer, clock: FakeClock) -> None:
    assert call(app, "/healthz")[0] == "200 OK"
    clock.now += 3_600  # far past health_stall_polls x poll_interval + the poll's timeout
    status, body = call(app, "/healthz")
    assert status.startswith("503") and b"stalled" in body
    e.poller.progress.mark()
    assert call(app, "/healthz")[0] == "200 OK"


def test_readiness_waits_for_the_first_successful_poll() -> None:
    clock = FakeClock(5_000.0)
    with SimulatedIceProd(build_store(datasets=3, seed=1)) as simulator:
        e = exporter(clock, api_url=simulator.url)
        with served(e) as app:
            assert call(app, "/readyz")[0].startswith("503")
            snapshot = asyncio.run(e.once())
            assert snapshot.up
            assert call(app, "/readyz")[0] == "200 OK"
            status, page = call(app, "/")
            _, metrics = call(app, "/metrics")
    assert status == "200 OK" and b"IceProd exporter" in page and b"&lt;redacted&gt;" in page
    names = {f.name for f in text_string_to_metric_families(metrics.decode())}
    assert {"iceprod_up", "iceprod_dataset_jobs", "process_cpu_seconds"} <= names


def test_process_metrics_can_be_turned_off() -> None:
    e = exporter(FakeClock(5_000.0), process_metrics="false")
    body = e.exposition()[0].decode()
    assert "process_cpu_seconds_total" not in body and "iceprod_up 0.0" in body
