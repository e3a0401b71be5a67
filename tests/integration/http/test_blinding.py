"""Nothing IceProd sends blinds the exporter: the daemon over real HTTP against a scripted IceProd.

The scripted server (tests/support/scripted_http.py) stands in for IceProd so a test can send what
the real server never would on purpose: values beyond a float, lone surrogates, duplicate numbers,
hangs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.exporter import (
    Samples,
    free_port,
    http_get,
    openmetrics_families,
    samples,
    start_exporter,
    wait_for,
)
from tests.support.monitoring import prom_query, start_prometheus
from tests.support.scripted_http import Reply, ScriptedServer

# each test runs the daemon in a process of its own, one also a real Prometheus


def dataset(number: int, **extra: Any) -> dict[str, Any]:
    return {"dataset": number, "status": "processing", "jobs_submitted": 1, **extra}


def serve_datasets(server: ScriptedServer, datasets: dict[str, dict[str, Any]]) -> None:
    server.script["/datasets"] = [Reply(200, datasets)]
    server.script["/task_counts/status"] = [Reply(200, {})]
    for dataset_id in datasets:
        base = f"/datasets/{dataset_id}"
        server.script[f"{base}/job_counts/status"] = [Reply(200, {"processing": 1})]
        server.script[f"{base}/task_counts/name_status"] = [Reply(200, {"main": {"queued": 1}})]
        server.script[f"{base}/task_stats"] = [Reply(200, {})]


class Daemon:
    def __init__(self, process: subprocess.Popen[str], url: str, log: Path) -> None:
        self.process, self.url, self.log = process, url, log

    def scrape(self, accept: str = "") -> tuple[int, str]:
        import urllib.request

        request = urllib.request.Request(self.url + "metrics", headers={"Accept": accept})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""

    def samples(self) -> Samples:
        status, body = self.scrape()
        assert status == 200, status
        return samples(body)

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples().get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def iceprod() -> Iterator[ScriptedServer]:
    with ScriptedServer() as server:
        yield server


def run_daemon(tmp_path: Path, api_url: str, **settings: str) -> Daemon:
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "API_URL": api_url,
        "ICEPROD_EXPORTER_TOKEN": "static-test-token",
        "PROMETHEUS_PORT": str(port),
        "ICEPROD_EXPORTER_LISTEN_ADDRESS": "127.0.0.1",
        "ICEPROD_EXPORTER_POLL_INTERVAL": "1",
        "ICEPROD_EXPORTER_LOG_FORMAT": "json",
        **{f"ICEPROD_EXPORTER_{k.upper()}": v for k, v in settings.items()},
    }
    log = tmp_path / "exporter.log"
    url = f"http://127.0.0.1:{port}/"
    return Daemon(start_exporter(env, url, log), url, log)


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.process.terminate()
        daemon.process.wait(timeout=10)


def test_values_the_exposition_cannot_carry_never_break_a_scrape(
    iceprod: ScriptedServer, daemons: list[Daemon], tmp_path: Path
) -> None:
    serve_datasets(
        iceprod,
        {
            "ok": dataset(1),
            "huge": dataset(2, jobs_submitted=10**400, priority=10**400),
            "surrogate": dataset(3, description="\ud800 lone surrogate"),
            "dup-a": dataset(4),
            "dup-b": dataset(4),
        },
    )
    iceprod.script["/datasets/ok/job_counts/status"] = [Reply(200, {"processing": 10**400})]
    daemons.append(daemon := run_daemon(tmp_path, iceprod.url))
    for accept in ("", "application/openmetrics-text; version=1.0.0"):
        status, body = daemon.scrape(accept)
        assert status == 200
        families = openmetrics_families(body) if accept else text_string_to_metric_families(body)
        names = {f.name for f in families}
        assert "iceprod_dataset_info" in names
    samples = daemon.samples()
    assert samples[("iceprod_up", ())] == 1, "unfit values are dropped, IceProd is still up"
    info = [labels for (name, labels) in samples if name == "iceprod_dataset_info"]
    numbers = sorted(dict(labels)["dataset"] for labels in info)
    assert numbers == ["1", "2", "3", "4"], "one of the two datasets numbered 4"
    assert ("iceprod_dataset_jobs", (("dataset", "1"), ("status", "processing"))) not in samples
    assert ("iceprod_dataset_jobs", (("dataset", "2"), ("status", "processing"))) in samples
    for field in ("jobs_submitted", "priority", "description", "dataset_conflict", "job_counts"):
        value = daemon.value("iceprod_exporter_bad_values_total", field=field)
        assert value is not None and value >= 1, field


def test_a_hang_shows_as_down_within_timeout_plus_a_second(
    iceprod: ScriptedServer, daemons: list[Daemon], tmp_path: Path
) -> None:
    serve_datasets(iceprod, {"a": dataset(1)})
    daemons.append(daemon := run_daemon(tmp_path, iceprod.url, timeout="2", retries="2"))
    assert daemon.value("iceprod_up") == 1
    hang_began: list[float] = []

    def on_request(path: str) -> None:
        if path == "/datasets" and not hang_began:
            hang_began.append(time.monotonic())

    iceprod.script["/datasets"] = [Reply(200, {}, delay=60)]
    iceprod.on_request = on_request
    wait_for(lambda: daemon.value("iceprod_up") == 0, 10, "iceprod_up 0", interval=0.05)
    assert hang_began, "the exporter asked during the hang"
    took = time.monotonic() - hang_began[0]
    assert took <= 2 + 1, f"iceprod_up went to 0 {took:.1f}s into the hang"


def test_a_first_failure_is_an_increase_in_a_real_prometheus(
    iceprod: ScriptedServer, daemons: list[Daemon], tmp_path: Path
) -> None:
    serve_datasets(iceprod, {"a": dataset(1)})
    # never quiet: the counts stay unchanged, yet the failing read must come on the next cycle
    daemons.append(daemon := run_daemon(tmp_path, iceprod.url, retries="0", quiet_after_polls="0"))
    config = tmp_path / "prometheus.yml"
    config.write_text(
        textwrap.dedent(
            f"""
            global: {{scrape_interval: 1s, evaluation_interval: 1s}}
            scrape_configs:
              - job_name: iceprod-exporter
                static_configs: [{{targets: ["{daemon.url[7:-1]}"]}}]
            """
        )
    )
    prometheus = start_prometheus(config, tmp_path)
    try:
        route = "/datasets/a/job_counts/status"
        series = (
            'iceprod_exporter_api_request_failures_total{endpoint="'
            + "/datasets/{dataset_id}/job_counts/status"
            + '",reason="server_error"}'
        )
        wait_for(lambda: prom_query(prometheus.url, series), 30, "the zero series scraped")
        assert float(prom_query(prometheus.url, series)[0]["value"][1]) == 0
        time.sleep(3)  # a few scrapes at 0 after the clean start
        served = iceprod.script[route]
        iceprod.script[route] = [Reply(500, {"error": "once"}), *served]
        wait_for(lambda: len(iceprod.script[route]) == 1, 10, "the one failure served")
        assert wait_for(
            lambda: prom_query(prometheus.url, f"increase({series}[2m]) > 0"),
            30,
            "increase() > 0 after a single failure",
        )
    finally:
        prometheus.stop()


def test_a_poller_that_keeps_crashing_fails_healthz(tmp_path: Path) -> None:
    """A poll that keeps crashing fails /healthz, which says why, as the landing page does.

    The bug is simulated by making the snapshot assembly raise: each poll is a failed poll.
    """
    script = textwrap.dedent(
        """
        import asyncio, sys
        from iceprod_exporter.poll import poller
        from iceprod_exporter.cli import main

        def broken(*args, **kwargs):
            raise RuntimeError("simulated bug")

        poller.assemble = broken
        sys.exit(main(sys.argv[1:]))
        """
    )
    with ScriptedServer() as iceprod:
        serve_datasets(iceprod, {"a": dataset(1)})
        port = free_port()
        log = tmp_path / "log"
        with log.open("w") as out:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    script,
                    "run",
                    "--api-url",
                    iceprod.url,
                    "--token",
                    "t",
                    "--listen-address",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--poll-interval",
                    "1",
                    "--log-format",
                    "json",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            url = f"http://127.0.0.1:{port}/"
            wait_for(
                lambda: http_get(url + "healthz")[0] == 503,
                30,
                "healthz 503",
                diagnose=log.read_text,
            )
            body = http_get(url + "healthz")[1]
            assert b"crashed" in body and b"RuntimeError" in body, body
            assert http_get(url + "metrics")[0] == 200
            page = http_get(url)[1]
            assert b"RuntimeError" in page, "the landing page says why"
            crashed = [line for line in log.read_text().splitlines() if "poll.crashed" in line]
            assert crashed and all(line.startswith("{") for line in crashed), "one JSON line each"
        finally:
            process.terminate()
            process.wait(timeout=10)
