"""The housekeeping watchdog and the progress rules end to end, on the real IceProd 3.2.43.

The real REST server (tests/support/real_iceprod/README.md) is seeded through its API with datasets
that show each housekeeping symptom and healthy ones beside them
(``tests.support.housekeeping.DATASETS``); the exporter (its CLI, a subprocess) polls it every
second; a real Prometheus scrapes the exporter and evaluates the mixin's rules, rendered with
waits of seconds (``tests.support.housekeeping.FAST``). Everything listens on 127.0.0.1.

1. the progress and time-to-completion rules of a truncated dataset count the jobs and tasks it
   has, not ``jobs_submitted``; an always-active dataset has none;
2. each housekeeping alert fires for its symptom and for nothing healthy;
3. IceProd's own crons, run once, fix what they are for, and the alerts for it resolve.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from iceprod_simulator import OIDCIssuer
from tests.support.exporter import free_port, http_get, start_exporter, wait_for
from tests.support.housekeeping import (
    AFTER_CRONS,
    CRONS,
    HOUSEKEEPING,
    STATUS_AFTER_CRONS,
    SYMPTOMS,
    fast_rules,
    seed,
)
from tests.support.monitoring import EXPORTER_JOB, Server, prom_query, start_prometheus
from tests.support.real_iceprod.harness import ADMIN_CLAIMS, SYSTEM_CLAIMS, RealIceProd, fetch_token
from tests.support.real_iceprod.seed import SeededDataset

pytestmark = [pytest.mark.timeout(300)]

AUDIENCE = "iceprod"
CLIENT, SECRET = "watchdog-exporter", "watchdog-Secret-71c3e9a0"
ADMIN, ADMIN_SECRET = "watchdog-admin", "watchdog-admin-secret"
#: the slowest alert (materialization: flat 5 s, then 5 s more) fires well within this
ALERT_TIMEOUT = 40.0


Firing = frozenset[tuple[str, str]]


@dataclass
class Stack:
    """The seeded server, the exporter and Prometheus."""

    api: RealIceProd
    seeded: dict[str, SeededDataset]
    token: str
    exporter_log: Path
    prometheus: Server

    def number(self, key: str) -> str:
        """The dataset number (our ``dataset`` label) of a scenario key."""
        return str(self.seeded[key].dataset)

    def query(self, expr: str, at: float | None = None) -> dict[str, float]:
        """Instant query: the value of each resulting series, by its dataset key (or "")."""
        keys = {self.number(key): key for key in self.seeded}
        return {
            keys.get(r["metric"].get("dataset", ""), ""): float(r["value"][1])
            for r in prom_query(self.prometheus.url, expr, at)
        }

    def firing(self) -> Firing:
        """(alert, dataset key or resource) of every housekeeping alert firing now."""
        status, body = http_get(self.prometheus.url + "/api/v1/alerts")
        assert status == 200, body[:300]
        keys = {self.number(key): key for key in self.seeded}
        return frozenset(
            (
                a["labels"]["alertname"],
                keys.get(a["labels"].get("dataset", ""), "") or a["labels"].get("resource", ""),
            )
            for a in json.loads(body)["data"]["alerts"]
            if a["state"] == "firing" and a["labels"]["alertname"] in HOUSEKEEPING
        )

    def status(self, key: str) -> str:
        """The dataset's status in IceProd."""
        dataset_id = self.seeded[key].dataset_id
        answer = requests.get(
            f"{self.api.url}/datasets/{dataset_id}",
            headers={"Authorization": "Bearer " + self.token},
            timeout=30,
        )
        answer.raise_for_status()
        return str(answer.json()["status"])

    def logs(self) -> str:
        """Log tails, for failure messages."""
        return "\n".join(
            [
                self.exporter_log.read_text()[-3000:],
                self.prometheus.log_tail(3000),
                self.api.log_tail(),
            ]
        )


def _start_exporter(
    workdir: Path, api: RealIceProd, issuer: OIDCIssuer
) -> tuple[subprocess.Popen[str], str]:
    """``iceprod-exporter run`` polling every second, never resting on quiet datasets."""
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "API_URL": api.url,
        "OAUTH_URL": issuer.url,
        "OAUTH_CLIENT_ID": CLIENT,
        "OAUTH_CLIENT_SECRET": SECRET,
        "PROMETHEUS_PORT": str(port),
        "ICEPROD_EXPORTER_LISTEN_ADDRESS": "127.0.0.1",
        "ICEPROD_EXPORTER_POLL_INTERVAL": "1",
        "ICEPROD_EXPORTER_SLOW_POLL_FACTOR": "1",
        "ICEPROD_EXPORTER_QUIET_AFTER_POLLS": "0",
        "ICEPROD_EXPORTER_TASK_STATS_INTERVAL": "1",
        "ICEPROD_EXPORTER_TIMEOUT": "10",
    }
    url = f"http://127.0.0.1:{port}/"
    return start_exporter(env, url, workdir / "exporter.log"), f"127.0.0.1:{port}"


def _prometheus_config(workdir: Path, target: str) -> Path:
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in fast_rules(workdir)],
        "scrape_configs": [{"job_name": EXPORTER_JOB, "static_configs": [{"targets": [target]}]}],
    }
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("monitoring-real-iceprod")
    with OIDCIssuer(token_ttl=600, audience=AUDIENCE) as issuer:
        issuer.register_client(CLIENT, SECRET, SYSTEM_CLAIMS)
        issuer.register_client(ADMIN, ADMIN_SECRET, ADMIN_CLAIMS)
        with RealIceProd(issuer.url, AUDIENCE, log_dir=workdir, prometheus=False) as api:
            token = fetch_token(issuer.url, CLIENT, SECRET)
            admin = fetch_token(issuer.url, ADMIN, ADMIN_SECRET)
            seeded = seed(api.url, token, admin)
            exporter, target = _start_exporter(workdir, api, issuer)
            try:
                prometheus = start_prometheus(_prometheus_config(workdir, target), workdir)
                try:
                    yield Stack(api, seeded, token, workdir / "exporter.log", prometheus)
                finally:
                    prometheus.stop()
            finally:
                exporter.terminate()
                assert exporter.wait(15) == 0, (workdir / "exporter.log").read_text()[-3000:]
        assert api.returncode == 0, api.log_tail()


def test_progress_of_a_truncated_dataset_counts_the_jobs_it_has(stack: Stack) -> None:
    """Truncated after 3 of 10 jobs (one complete): 3 planned, never 10; always-active: none."""
    planned = "dataset:dataset_jobs_planned:sum"
    wait_for(
        lambda: (
            "truncated_running" in stack.query(planned)
            and "truncated_running" in stack.query("dataset:dataset_jobs_complete:ratio")
        ),
        30,
        "the recorded progress of the truncated dataset",
        diagnose=stack.logs,
    )
    jobs_submitted = stack.query("max by (dataset) (iceprod_dataset_jobs_submitted)")
    assert jobs_submitted["truncated_running"] == 10
    assert stack.query(planned)["truncated_running"] == 3
    assert stack.query("dataset:dataset_tasks_planned:sum")["truncated_running"] == 3
    assert stack.query("dataset:dataset_tasks_remaining:sum")["truncated_running"] == 2
    assert stack.query("dataset:dataset_jobs_complete:ratio")["truncated_running"] == 1 / 3
    for rule in (
        planned,
        "dataset:dataset_tasks_remaining:sum",
        "dataset:dataset_jobs_complete:ratio",
        "dataset:dataset_time_to_completion:seconds",
    ):
        assert "always" not in stack.query(rule), f"{rule} of an always-active dataset"
    assert "always" in stack.query("dataset:dataset_jobs:sum"), "yet its jobs are counted"

    # a task runs and completes: one task left, at the rate of the last hour
    seeded = stack.seeded["truncated_running"]
    for status in ("waiting", "queued", "processing", "complete"):
        answer = requests.put(
            f"{stack.api.url}/tasks/{seeded.task_ids[1][0]}/status",
            json={"status": status},
            headers={"Authorization": "Bearer " + stack.token},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
    eta = "dataset:dataset_time_to_completion:seconds"
    wait_for(
        lambda: "truncated_running" in stack.query(eta),
        30,
        "a time to completion for the truncated dataset",
        diagnose=stack.logs,
    )
    at = float(prom_query(stack.prometheus.url, "time()")[0]["value"][1])
    remaining = stack.query("dataset:dataset_tasks_remaining:sum", at)["truncated_running"]
    rate = stack.query("dataset:dataset_tasks_completed:deriv1h", at)["truncated_running"]
    assert remaining == 1, "3 planned tasks, 2 complete: not 10 jobs' worth"
    assert rate > 0
    assert stack.query(eta, at)["truncated_running"] == pytest.approx(remaining / rate)


def _wait_firing(stack: Stack, expected: Firing, what: str) -> None:
    wait_for(
        lambda: stack.firing() == expected,
        ALERT_TIMEOUT,
        what,
        diagnose=lambda: f"firing: {sorted(stack.firing())}\n{stack.logs()}",
    )


def test_each_housekeeping_alert_fires_on_its_symptom_only(stack: Stack) -> None:
    # the slowest (materialization) needs 10 s: by then every other rule had its chance
    _wait_firing(stack, SYMPTOMS, "each housekeeping symptom to fire, and nothing healthy")
    assert {alert for alert, _ in SYMPTOMS} == set(HOUSEKEEPING), "one scenario per cron"
    status, body = http_get(stack.prometheus.url + "/api/v1/alerts")
    assert status == 200
    for alert in json.loads(body)["data"]["alerts"]:
        name = alert["labels"]["alertname"]
        if alert["state"] == "firing" and name in HOUSEKEEPING:
            assert alert["labels"]["cron"] == HOUSEKEEPING[name]
            assert (
                f"IceProd's {HOUSEKEEPING[name]} cron has not run"
                in (alert["annotations"]["description"])
            )


def test_iceprods_crons_fix_what_they_watch_and_the_alerts_resolve(stack: Stack) -> None:
    _wait_firing(stack, SYMPTOMS, "the symptoms before the crons run")
    for cron in CRONS:
        stack.api.run_cron(cron, CLIENT, SECRET)
    assert {key: stack.status(key) for key in STATUS_AFTER_CRONS} == STATUS_AFTER_CRONS
    _wait_firing(stack, AFTER_CRONS, "the alerts of the crons that ran to resolve")
