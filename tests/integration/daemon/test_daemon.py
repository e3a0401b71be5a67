"""The daemon end to end over real HTTP: the CLI's ``run`` against the simulated IceProd."""

from __future__ import annotations

import gzip
import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from iceprod_simulator import (
    SYSTEM_ROLE_CLAIMS,
    OIDCIssuer,
    SimulatedIceProd,
    Simulation,
    build_store,
)
from tests.support.exporter import (
    Samples,
    free_port,
    http_get,
    openmetrics_families,
    samples,
    start_exporter,
    wait_for,
)
from tests.support.monitoring import tool

# the daemon in a process of its own against the simulator (seconds), and promtool

SECRET = "daemon-test-secret-0xC0FFEE"
MAX_STALENESS = 6


@dataclass
class Stack:
    issuer: OIDCIssuer
    simulator: SimulatedIceProd
    process: subprocess.Popen[str]
    url: str
    log: Path

    def scrape(self) -> Samples:
        status, body = http_get(self.url + "metrics")
        assert status == 200, status
        return samples(body.decode())

    def value(self, name: str, **labels: str) -> float | None:
        return self.scrape().get((name, tuple(sorted(labels.items()))))

    def datasets_exposed(self) -> int:
        return sum(1 for (name, _) in self.scrape() if name == "iceprod_dataset_info")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    log = tmp_path_factory.mktemp("daemon") / "exporter.log"
    # 7 s tokens: refreshed every few seconds, so expiries happen while the test runs
    with OIDCIssuer(token_ttl=7) as issuer:
        issuer.register_client("exporter", SECRET, SYSTEM_ROLE_CLAIMS)
        store = build_store(datasets=12, seed=7)
        simulator = SimulatedIceProd(
            store, issuer=issuer, simulation=Simulation(store, 7), tick_seconds=0.5
        )
        with simulator:
            port = free_port()
            env = {
                "PATH": os.environ["PATH"],
                "API_URL": simulator.url,
                "OAUTH_URL": issuer.url,
                "OAUTH_CLIENT_ID": "exporter",
                "OAUTH_CLIENT_SECRET": SECRET,
                "PROMETHEUS_PORT": str(port),
                "ICEPROD_EXPORTER_LISTEN_ADDRESS": "127.0.0.1",
                "ICEPROD_EXPORTER_POLL_INTERVAL": "1",
                "ICEPROD_EXPORTER_MAX_STALENESS": str(MAX_STALENESS),
                "ICEPROD_EXPORTER_TIMEOUT": "2",
                "ICEPROD_EXPORTER_RETRIES": "0",
                "ICEPROD_EXPORTER_LOG_LEVEL": "debug",
            }
            url = f"http://127.0.0.1:{port}/"
            process = start_exporter(env, url, log)
            try:
                yield Stack(issuer, simulator, process, url, log)
            finally:
                process.terminate()
                assert process.wait(timeout=10) == 0, "SIGTERM stops the daemon cleanly"


def test_scrape_reports_the_simulated_iceprod(stack: Stack) -> None:
    assert stack.value("iceprod_up") == 1
    store = stack.simulator.store
    numbers = {str(d["dataset"]) for d in store.datasets.values() if d["status"] != "complete"}
    exposed = {
        dict(labels)["dataset"]
        for (name, labels) in stack.scrape()
        if name == "iceprod_dataset_info"
    }
    assert numbers <= exposed
    total = sum(v for (name, _), v in stack.scrape().items() if name == "iceprod_datasets")
    assert total == len(store.datasets)
    assert (stack.value("iceprod_exporter_token_expiry_timestamp_seconds") or 0) > time.time()


def test_health_readiness_and_landing_page(stack: Stack) -> None:
    assert http_get(stack.url + "healthz")[0] == 200
    assert http_get(stack.url + "readyz")[0] == 200
    status, body = http_get(stack.url)
    assert status == 200 and b"/metrics" in body and b"0.1.0" in body
    assert SECRET.encode() not in body
    assert http_get(stack.url + "nope")[0] == 404


def test_openmetrics_and_gzip_negotiation(stack: Stack) -> None:
    # what Prometheus itself sends
    accept = (
        "application/openmetrics-text;version=1.0.0;escaping=underscores;q=0.5,"
        "text/plain;version=0.0.4;q=0.3,*/*;q=0.1"
    )
    request = urllib.request.Request(
        stack.url + "metrics", headers={"Accept": accept, "Accept-Encoding": "gzip"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert response.headers["Content-Encoding"] == "gzip"
        text = gzip.decompress(response.read()).decode()
    assert text.count("# EOF") == 1 and text.endswith("# EOF\n")
    names = {f.name for f in openmetrics_families(text)}
    assert {"iceprod_up", "iceprod_dataset_jobs", "iceprod_exporter_api_requests"} <= names


def test_promtool_check_metrics_passes(stack: Stack) -> None:
    _, body = http_get(stack.url + "metrics")
    done = subprocess.run(
        [str(tool("promtool")), "check", "metrics"], input=body, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert not done.stdout.strip() and not done.stderr.strip(), "no lint findings"


def test_concurrent_scrapes_while_polling(stack: Stack) -> None:
    errors: list[str] = []

    def scraper() -> None:
        for _ in range(15):
            status, body = http_get(stack.url + "metrics")
            if status != 200 or b"iceprod_up 1.0" not in body:
                errors.append(f"{status}")

    threads = [threading.Thread(target=scraper) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors


def test_tokens_refresh_and_are_never_used_expired(stack: Stack) -> None:
    wait_for(
        lambda: (stack.value("iceprod_exporter_token_refreshes_total") or 0) >= 4,
        30,
        "three token expiries",
    )
    tokens = stack.simulator.records.tokens()
    assert len(tokens) >= 4
    assert all(use.expired_uses == 0 for use in tokens.values())
    assert stack.value("iceprod_up") == 1


def test_outage_keeps_values_then_drops_them_and_recovers(stack: Stack) -> None:
    before = stack.datasets_exposed()
    assert before > 0
    stack.simulator.down = True
    try:
        wait_for(lambda: stack.value("iceprod_up") == 0, 10, "iceprod_up 0")
        assert stack.datasets_exposed() == before, "last good values served meanwhile"
        # the outage may begin mid-poll (a dataset route fails first); the next poll's
        # discovery call is refused
        wait_for(
            lambda: (
                (
                    stack.value(
                        "iceprod_exporter_api_request_failures_total",
                        endpoint="/datasets",
                        reason="connection",
                    )
                    or 0
                )
                >= 1
            ),
            10,
            "the refused discovery call counted",
        )
        wait_for(lambda: stack.datasets_exposed() == 0, MAX_STALENESS + 5, "stale values dropped")
        assert http_get(stack.url + "healthz")[0] == 200, "polling still makes progress"
        assert stack.process.poll() is None, "nothing crashed"
    finally:
        stack.simulator.down = False
    wait_for(lambda: stack.value("iceprod_up") == 1, 20, "recovery")
    assert stack.datasets_exposed() >= before - 1


def test_secret_never_appears_in_logs_or_metrics(stack: Stack) -> None:
    _, body = http_get(stack.url + "metrics")
    assert SECRET.encode() not in body
    text = stack.log.read_text()
    assert "poll.finished" in text
    assert SECRET not in text
