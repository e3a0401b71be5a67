"""The shipped rules, Alertmanager routing and dashboards against real servers.

A real Prometheus (Debian's package) scrapes the exporter, which polls the built-in simulated
IceProd with tokens from the simulated OIDC issuer. Prometheus loads deploy/prometheus's
recording and alerting rules and sends to a real Alertmanager, configured from the shipped
alertmanager.yml with every receiver replaced by a webhook served inside this test. Everything
listens on 127.0.0.1 only.

To run in seconds instead of minutes, the test changes two things in temporary copies, and
nothing else: every alert's ``for:`` becomes 1s, and Alertmanager's group_wait/group_interval
become 1s. Scrapes and rule evaluation run every second and the exporter polls every second.

High availability: Prometheus scrapes the exporter as two targets, labelled
``pod="iceprod-exporter-a"`` and ``pod="iceprod-exporter-b"``, as the Prometheus Operator
scrapes two replicas. Every series therefore exists twice, and every rule, alert and dashboard
query below runs on that: totals must not double, alerts about IceProd's state must fire once.

Scenarios: IceProd goes down (IceProdAPIDown fires, reaches the on-call receiver, resolves when
it is back); IceProd answers 403 to everything (IceProdAPITokenRejected, likewise); a dataset
goes into errors (IceProdDatasetErrors fires for that dataset with its owners' labels, reaches
the receiver of its IceProd group, resolves when the dataset is processing again); the grid
daemon's scrapes fail (IceProdGridDown names its site from its last iceprod_info, reaches the
operators, and resolves when it answers again); the token may not read one dataset
(IceProdExporterPermissionDenied names the route while iceprod_up stays 1). Then every PromQL
query of every dashboard panel and variable, with Grafana's variables filled in as Grafana would,
must return data from this Prometheus. A grid daemon and condor_history_to_prometheus.py
(tests.support.monitoring.OtherExporters: their real metric names and labels, about the watched
dataset) are scraped as the jobs the mixin expects, so the joins and grid panels have data.

Owners: a second, small stack (another real Prometheus and Alertmanager, the same shipped rules
and routing) scrapes the exporter's own collector over a scripted snapshot
(tests.support.monitoring.ScriptedExporter), so that the order of events is the test's: a dataset of
group A in errors reaches only A's receiver and one of group B only B's (and one of a group
without a receiver the default receiver); while IceProdAPIDown fires, datasets going into
errors reach nobody, and reach their owners once IceProd answers again.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from grafana.mixin.config import DEFAULT
from iceprod_exporter.model.snapshot import Dataset
from iceprod_simulator import OIDCIssuer, SimulatedIceProd, Simulation, build_store
from iceprod_simulator.faults import DatasetFault
from iceprod_simulator.store import Store
from tests.support.exporter import free_port, http_get, wait_for
from tests.support.monitoring import (
    EXPORTER_JOB,
    PROMETHEUS_DIR,
    RULE_FILES,
    OtherExporters,
    ScriptedExporter,
    Server,
    assert_loopback_only,
    load_dashboards,
    prom_query,
    start_alertmanager,
    start_prometheus,
    substitute,
    targets,
    variable_promql,
    variable_query,
)

# real Prometheus and Alertmanager
pytestmark = [pytest.mark.timeout(300)]

SYSTEM_CLAIMS: dict[str, object] = {"resource_access": {"iceprod": {"roles": ["iceprod-system"]}}}
CLIENT_ID = "iceprod-exporter-e2e"
TOKEN_TTL = 30.0  # the exporter renews at half-life: a refresh happens ~15 s after start
ALERT_TIMEOUT = 45.0  # firing or resolving takes a few seconds; allow for a slow machine
#: Grafana's built-in variables as a 6-hour dashboard at 1 s scrapes would set them
RANGE_VALUES = {"__rate_interval": "1m", "__interval": "15s", "__range": "6h"}
#: the exporter is scraped as two HA replicas, told apart by this target label
REPLICAS = ("iceprod-exporter-a", "iceprod-exporter-b")


# ---------------------------------------------------------------------------- webhook


@dataclass
class Notification:
    """One POST from Alertmanager."""

    received: float
    receiver: str
    payload: dict[str, Any]


@dataclass
class Webhook:
    """An HTTP server on 127.0.0.1 recording Alertmanager's webhook notifications."""

    server: ThreadingHTTPServer
    notifications: list[Notification] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        """Base URL; the path names the receiver."""
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def find(
        self, alertname: str, labels: dict[str, str], status: str, since: float
    ) -> list[tuple[Notification, dict[str, Any]]]:
        """(notification, alert) pairs for a matching alert in a given status since a time."""
        with self.lock:
            received = list(self.notifications)
        found = []
        for note in received:
            if note.received < since:
                continue
            for alert in note.payload.get("alerts", []):
                alert_labels = alert.get("labels", {})
                if (
                    alert.get("status") == status
                    and alert_labels.get("alertname") == alertname
                    and all(alert_labels.get(k) == v for k, v in labels.items())
                ):
                    found.append((note, alert))
        return found

    def summary(self) -> str:
        """What arrived, for failure messages."""
        with self.lock:
            return "\n".join(
                f"{n.receiver}: "
                + ", ".join(
                    f"{a['labels'].get('alertname')}{{{a['labels'].get('dataset', '')}}}"
                    f"={a['status']}"
                    for a in n.payload.get("alerts", [])
                )
                for n in self.notifications[-30:]
            )


@contextlib.contextmanager
def webhook_server() -> Iterator[Webhook]:
    """Serve the webhook from a thread for the duration of the block."""
    hook: Webhook

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            payload = json.loads(self.rfile.read(length))
            with hook.lock:
                hook.notifications.append(Notification(time.time(), self.path.strip("/"), payload))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hook = Webhook(server)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.daemon = True
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# ---------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    """Everything the scenarios drive and observe."""

    store: Store
    api: SimulatedIceProd
    issuer: OIDCIssuer
    exporter: Server
    target: str
    prometheus: Server
    alertmanager: Server
    webhook: Webhook
    #: dataset number driven into errors and back
    errors_dataset: str
    #: dataset number that stays processing; the dataset dashboard is evaluated for it
    watched_dataset: str
    #: dataset number whose routes answer 403 when a test says so
    forbidden_dataset: str
    #: a grid daemon and condor_history, reporting on the watched dataset
    others: OtherExporters

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query against the test's Prometheus."""
        return prom_query(self.prometheus.url, expr)

    def logs(self) -> str:
        """Scrape errors and log tails of the servers, for failure messages."""
        status, body = http_get(self.prometheus.url + "/api/v1/targets")
        scrapes = [
            f"scrape {t['scrapeUrl']}: health={t['health']} lastError={t['lastError']!r}"
            for t in (json.loads(body)["data"]["activeTargets"] if status == 200 else [])
        ]
        tails = [s.log_tail(3000) for s in (self.exporter, self.prometheus, self.alertmanager)]
        return "\n".join(scrapes + tails)

    def dataset_id(self, number: str) -> str:
        """The dataset_id of a dataset number."""
        with self.store.lock:
            for dataset_id, doc in self.store.datasets.items():
                if str(doc["dataset"]) == number:
                    return str(dataset_id)
        raise KeyError(number)

    def set_status(self, number: str, status: str) -> None:
        """Change a dataset's status in the simulated IceProd, as PUT .../status would."""
        with self.store.lock:
            for doc in self.store.datasets.values():
                if str(doc["dataset"]) == number:
                    doc["status"] = status
                    return
        raise KeyError(number)


def _add_long_dataset(store: Store, description: str) -> str:
    """A dataset with many jobs still to materialize: it keeps processing during the test."""
    tasks = [
        {"name": "generate", "requirements": {"cpu": 1, "memory": 2.0}, "trays": []},
        {"name": "filter", "requirements": {"cpu": 1, "memory": 4.0}, "trays": []},
    ]
    dataset_id = store.add_dataset(
        {
            "description": description,
            "jobs_submitted": 2000,
            "tasks_submitted": 4000,
            "tasks_per_job": 2,
            "group": "simprod",
            "username": "alice",
        }
    )
    store.set_config(dataset_id, {"version": 3.2, "tasks": tasks, "options": {}})
    return str(store.datasets[dataset_id]["dataset"])


def _fast_rules(directory: Path) -> list[Path]:
    """Copies of the shipped rule files with every ``for:`` shortened to 1s."""
    copies = []
    for path in RULE_FILES:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        for group in document["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    assert rule["for"], f"{rule['alert']}: no for:"
                    rule["for"] = "1s"
        copy = directory / path.name
        copy.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        copies.append(copy)
    return copies


def _routes(route: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield route
    for child in route.get("routes", []):
        yield from _routes(child)


def _alertmanager_config(path: Path, webhook: Webhook) -> None:
    """The shipped alertmanager.yml, every receiver a webhook, grouping waits of 1s."""
    config = yaml.safe_load((PROMETHEUS_DIR / "alertmanager.yml").read_text(encoding="utf-8"))
    config["receivers"] = [
        {
            "name": receiver["name"],
            "webhook_configs": [
                {"url": f"{webhook.url}/{receiver['name']}", "send_resolved": True}
            ],
        }
        for receiver in config["receivers"]
    ]
    for route in _routes(config["route"]):
        route.update(group_wait="1s", group_interval="1s")
    path.write_text(yaml.safe_dump(config), encoding="utf-8")


def _prometheus_config(
    path: Path, rules: list[Path], exporter: str, alertmanager: str, others: str
) -> None:
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in rules],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": [
            {
                "job_name": EXPORTER_JOB,
                # the same exporter twice: two identical replicas, as Kubernetes would label them
                "static_configs": [
                    {"targets": [exporter], "labels": {"pod": pod}} for pod in REPLICAS
                ],
            },
            *(
                {"job_name": job, "metrics_path": path, "static_configs": [{"targets": [others]}]}
                for job, path in (
                    (DEFAULT.grid_job, "/grid"),
                    (DEFAULT.condor_history_job, "/condor-history"),
                )
            ),
        ],
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")


def _start_exporter(workdir: Path, api_url: str, oauth_url: str, secret: str) -> Server:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "iceprod_exporter",
        "run",
        f"--api-url={api_url}",
        "--auth-mode=client_credentials",
        f"--oauth-url={oauth_url}",
        f"--oauth-client-id={CLIENT_ID}",
        "--listen-address=127.0.0.1",
        f"--port={port}",
        "--poll-interval=1",
        "--max-staleness=5",
        "--task-stats-interval=2",
        "--slow-poll-factor=1",
        "--retries=0",
        "--timeout=2",
        "--log-format=json",
    ]
    env = {**os.environ, "ICEPROD_EXPORTER_OAUTH_CLIENT_SECRET": secret}
    log = workdir / "exporter.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    server = Server("exporter", proc, f"http://127.0.0.1:{port}", log, workdir)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"exporter exited with {proc.returncode}\n{server.log_tail()}")
        return http_get(server.url + "/readyz", timeout=2)[0] == 200

    try:
        wait_for(ready, 30, "the exporter's /readyz", diagnose=server.log_tail)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("monitoring-e2e")
    store = build_store(datasets=4, seed=7)
    errors_dataset = _add_long_dataset(store, "e2e dataset driven into errors")
    watched_dataset = _add_long_dataset(store, "e2e dataset that keeps processing")
    forbidden_dataset = _add_long_dataset(store, "e2e dataset the token may not read")
    issuer = OIDCIssuer(token_ttl=TOKEN_TTL)
    secret = secrets.token_urlsafe(24)
    issuer.register_client(CLIENT_ID, secret, SYSTEM_CLAIMS)
    api = SimulatedIceProd(
        store, issuer=issuer, simulation=Simulation(store, seed=7), tick_seconds=1.0
    )
    servers: list[Server] = []
    with contextlib.ExitStack() as cleanup:
        issuer.start()
        cleanup.callback(issuer.stop)
        api.start()
        cleanup.callback(api.stop)
        webhook = cleanup.enter_context(webhook_server())
        others = OtherExporters(watched_dataset, "generate")
        cleanup.callback(others.stop)

        def stop_servers() -> None:
            for server in reversed(servers):
                server.stop()

        cleanup.callback(stop_servers)

        exporter = _start_exporter(workdir, api.url, issuer.url, secret)
        servers.append(exporter)
        am_config = workdir / "alertmanager.yml"
        _alertmanager_config(am_config, webhook)
        alertmanager = start_alertmanager(am_config, workdir)
        servers.append(alertmanager)
        target = exporter.url.removeprefix("http://")
        prom_config = workdir / "prometheus.yml"
        _prometheus_config(
            prom_config,
            _fast_rules(workdir),
            target,
            alertmanager.url.removeprefix("http://"),
            others.target,
        )
        prometheus = start_prometheus(prom_config, workdir, ("--rules.alert.resend-delay=1s",))
        servers.append(prometheus)
        stack = Stack(
            store,
            api,
            issuer,
            exporter,
            target,
            prometheus,
            alertmanager,
            webhook,
            errors_dataset,
            watched_dataset,
            forbidden_dataset,
            others,
        )
        _warm_up(stack)
        yield stack


def _warm_up(stack: Stack) -> None:
    """Wait for scrapes, recorded series and a token refresh failure to be in Prometheus."""
    wait_for(
        lambda: (
            len(stack.query(f'up{{job="{EXPORTER_JOB}"}} == 1')) == len(REPLICAS)
            and len(stack.query("iceprod_up == 1")) == len(REPLICAS)
        ),
        30,
        "Prometheus to scrape both replicas with iceprod_up 1",
        diagnose=stack.logs,
    )
    # The issuer refuses the next refresh (due at half the token's life), then recovers: the
    # token-failure panels get a series. The current token stays valid meanwhile.
    stack.issuer.fail_status = 503
    try:
        wait_for(
            lambda: stack.query("iceprod_exporter_token_refresh_failures_total"),
            TOKEN_TTL + 15,
            "a token refresh failure to be scraped",
            diagnose=stack.logs,
        )
    finally:
        stack.issuer.fail_status = None
    watched = f'dataset="{stack.watched_dataset}"'
    wait_for(
        lambda: (
            stack.query(f"dataset:dataset_tasks_completed:deriv1h{{{watched}}} > 0")
            and stack.query(f"iceprod_dataset_task_walltime_stddev_seconds{{{watched}}}")
            and stack.query(f'dataset:dataset_tasks:sum_by_status{{{watched}, status="failed"}}')
        ),
        60,
        f"dataset {stack.watched_dataset} to complete tasks and have walltime statistics",
        diagnose=stack.logs,
    )


# ---------------------------------------------------------------------------- scenarios


def _wait_alert(
    stack: Stack, alertname: str, labels: dict[str, str], status: str, since: float
) -> tuple[Notification, dict[str, Any]]:
    found = wait_for(
        lambda: stack.webhook.find(alertname, labels, status, since),
        ALERT_TIMEOUT,
        f"{alertname} {labels} {status} at the webhook",
        diagnose=lambda: "notifications:\n" + stack.webhook.summary() + "\n" + stack.logs(),
    )
    note, alert = found[0]
    return note, alert


def _prometheus_alerts(stack: Stack, alertname: str) -> list[dict[str, Any]]:
    status, body = http_get(stack.prometheus.url + "/api/v1/alerts")
    assert status == 200, body[:300]
    alerts: list[dict[str, Any]] = json.loads(body)["data"]["alerts"]
    return [a for a in alerts if a["labels"].get("alertname") == alertname]


def test_every_server_listens_on_loopback_only(stack: Stack) -> None:
    for server in (stack.prometheus, stack.alertmanager, stack.exporter):
        addresses = assert_loopback_only(server.proc, server.name)
        assert len(addresses) == 1, f"{server.name} listens on {sorted(addresses)}"


def test_iceprod_down_alert_reaches_oncall_and_resolves(stack: Stack) -> None:
    labels = {"job": EXPORTER_JOB, "instance": stack.target}
    since = time.time()
    stack.api.down = True
    try:
        note, alert = _wait_alert(stack, "IceProdAPIDown", labels, "firing", since)
        # The description's query template lists the failure reasons counted in the last 5
        # minutes. increase() needs two samples of the new failure series, so with `for: 1s`
        # the first notification may predate them: read the re-rendered annotation instead.
        wait_for(
            lambda: any(
                "connection=" in a["annotations"]["description"]
                for a in _prometheus_alerts(stack, "IceProdAPIDown")
            ),
            ALERT_TIMEOUT,
            "IceProdAPIDown's description to name the failure reason",
            diagnose=lambda: json.dumps(_prometheus_alerts(stack, "IceProdAPIDown")),
        )
    finally:
        stack.api.down = False
    assert note.receiver == "iceprod-oncall"  # critical alerts page
    assert alert["labels"]["severity"] == "critical"
    assert stack.target in alert["annotations"]["summary"]
    assert "/d/iceprod-exporter/" in alert["annotations"]["dashboard_url"]
    _wait_alert(stack, "IceProdAPIDown", labels, "resolved", note.received)
    assert stack.query("iceprod_up == 1"), "iceprod_up did not recover"


def test_token_rejected_alert_reaches_oncall_and_resolves(stack: Stack) -> None:
    labels = {"job": EXPORTER_JOB, "instance": stack.target}
    since = time.time()
    stack.api.faults.fail_reason = "authentication failed"
    stack.api.faults.fail_status = 403  # what IceProd answers a bad or expired token
    try:
        note, alert = _wait_alert(stack, "IceProdAPITokenRejected", labels, "firing", since)
    finally:
        stack.api.faults.fail_status = None
        stack.api.faults.fail_reason = None
    assert note.receiver == "iceprod-oncall"
    assert "rejects the token" in alert["annotations"]["summary"]
    assert stack.query(
        'iceprod_exporter_api_request_failures_total{endpoint="/datasets", reason="forbidden"}'
    ), "the exporter did not count the 403s as reason=forbidden"
    _wait_alert(stack, "IceProdAPITokenRejected", labels, "resolved", note.received)


def test_dataset_errors_alert_reaches_its_group_and_resolves(stack: Stack) -> None:
    number = stack.errors_dataset
    labels = {"dataset": number}
    since = time.time()
    stack.set_status(number, "errors")
    try:
        note, alert = _wait_alert(stack, "IceProdDatasetErrors", labels, "firing", since)
    finally:
        stack.set_status(number, "processing")
    # the dataset belongs to IceProd group simprod (user alice): its receiver, and only that
    assert note.receiver == "iceprod-group-simprod"
    assert alert["labels"] == {
        "alertname": "IceProdDatasetErrors",
        "dataset": number,
        "group": "simprod",
        "username": "alice",
        "severity": "warning",
    }
    assert note.payload["groupLabels"] == {"alertname": "IceProdDatasetErrors", "dataset": number}
    annotations = alert["annotations"]
    assert f"dataset {number} is in status errors" in annotations["summary"]
    # the description joins iceprod_dataset_info through a query template
    assert (
        "e2e dataset driven into errors; group simprod, user alice" in (annotations["description"])
    ), annotations
    assert annotations["dashboard_url"].endswith(
        f"/d/iceprod-dataset/iceprod-dataset?var-dataset={number}"
    )
    _wait_alert(stack, "IceProdDatasetErrors", labels, "resolved", note.received)


def test_replicas_are_counted_once(stack: Stack) -> None:
    """Every series exists twice (two replicas); the recorded totals count each once."""
    assert stack.query("count by (dataset, task_name, status) (iceprod_dataset_tasks) == 2")
    # the two replicas are one exporter scraped twice: a series that a new snapshot brings is in
    # one scrape before the other, so they agree within a scrape interval, not at every instant
    wait_for(
        lambda: (
            not stack.query("count by (dataset, task_name, status) (iceprod_dataset_tasks) != 2")
        ),
        20,
        "both replicas to serve the same series",
    )
    one = f'pod="{REPLICAS[0]}"'
    for recorded, raw in (
        ("iceprod:dataset_jobs:sum_by_status", f"iceprod_dataset_jobs{{{one}}}"),
        ("iceprod:dataset_tasks:sum_by_status", f"iceprod_dataset_tasks{{{one}}}"),
        ("dataset:dataset_tasks:sum_by_status", f"iceprod_dataset_tasks{{{one}}}"),
    ):
        # the replicas are scraped a moment apart and IceProd moves on: about 1, never 2
        (ratio,) = stack.query(f"sum({recorded}) / sum({raw})")
        assert 0.8 < float(ratio["value"][1]) < 1.25, (recorded, ratio)
    (remaining,) = stack.query(
        f'dataset:dataset_tasks_remaining:sum{{dataset="{stack.watched_dataset}"}}'
    )
    assert float(remaining["value"][1]) <= 4000, "tasks_submitted (4000) counted twice"


def test_grid_down_alert_names_the_site_reaches_the_operators_and_resolves(stack: Stack) -> None:
    labels = {"job": DEFAULT.grid_job, "instance": stack.others.target}
    since = time.time()
    stack.others.grid_down = True  # the daemon's scrapes fail, as when it is dead
    try:
        note, alert = _wait_alert(stack, "IceProdGridDown", labels, "firing", since)
    finally:
        stack.others.grid_down = False
    assert note.receiver == "iceprod-operators"
    assert set(alert["labels"]) == {"alertname", "job", "instance", "severity"}
    # the site and queue type come from the daemon's last iceprod_info{type="grid"}
    assert (
        f"grid daemon at {stack.others.target} (site NPX, condor) for"
        in (alert["annotations"]["description"])
    )
    _wait_alert(stack, "IceProdGridDown", labels, "resolved", note.received)


def test_permission_denied_alert_names_the_route_without_an_outage(stack: Stack) -> None:
    # IceProd answers 403 on the routes of one (processing) dataset: its ACL excludes the token
    dataset_id = stack.dataset_id(stack.forbidden_dataset)
    endpoint = "/datasets/{dataset_id}/job_counts/status"
    labels = {"job": EXPORTER_JOB, "instance": stack.target, "endpoint": endpoint}
    since = time.time()
    stack.api.faults.datasets[dataset_id] = DatasetFault()
    try:
        note, alert = _wait_alert(stack, "IceProdExporterPermissionDenied", labels, "firing", since)
        assert stack.query(
            f'max_over_time(iceprod_exporter_permission_denied{{endpoint="{endpoint}"}}[1m]) > 0'
        )
        assert len(stack.query("iceprod_up == 1")) == len(REPLICAS), "a 403 is not an outage"
        assert not _prometheus_alerts(stack, "IceProdAPITokenRejected")
    finally:
        del stack.api.faults.datasets[dataset_id]
    assert note.receiver == "iceprod-operators"
    assert alert["labels"]["severity"] == "warning"
    annotations = alert["annotations"]
    assert annotations["summary"] == f"iceprod-exporter {stack.target} may not read {endpoint}"
    assert "not an outage" in annotations["description"]
    assert "iceprod_exporter_forbidden_datasets" in annotations["description"]
    # it resolves 10 minutes after the last 403 (max_over_time window): not waited for here


# ---------------------------------------------------------------------------- dashboards


def _ensure_api_failures(stack: Stack) -> None:
    """API failure counters exist only after a failure: cause a short outage if none yet."""
    if stack.query("iceprod_exporter_api_request_failures_total"):
        return
    stack.api.down = True
    try:
        wait_for(
            lambda: stack.query("iceprod_exporter_api_request_failures_total"),
            30,
            "an API failure to be scraped",
            diagnose=stack.logs,
        )
    finally:
        stack.api.down = False
    wait_for(lambda: stack.query("iceprod_up == 1"), 30, "IceProd to be reachable again")


def _ensure_permission_denied(stack: Stack) -> None:
    """The 403 gauge has a series per route only after a 403: cause one if none yet."""
    if stack.query("iceprod_exporter_permission_denied"):
        return
    dataset_id = stack.dataset_id(stack.forbidden_dataset)
    stack.api.faults.datasets[dataset_id] = DatasetFault()
    try:
        wait_for(
            lambda: stack.query("iceprod_exporter_permission_denied"),
            30,
            "a 403 to be scraped",
            diagnose=stack.logs,
        )
    finally:
        del stack.api.faults.datasets[dataset_id]


def _variable_values(stack: Stack, dashboard: dict[str, Any], values: dict[str, str]) -> None:
    """Evaluate the dashboard's query variables in order, as Grafana does; check the values."""
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        expr, label = variable_promql(substitute(variable_query(variable), values))
        result = stack.query(expr)
        found = sorted({r["metric"][label] for r in result if label in r["metric"]})
        assert found, f"variable ${variable['name']}: {expr} lists no {label}"
        if variable["name"] == "dataset":
            assert stack.watched_dataset in found, found
            values["dataset"] = stack.watched_dataset
        elif variable["name"] == "instance":
            assert stack.target in found, found
            values["instance"] = variable.get("allValue", found[0])
        else:
            # "All", the default of multi-value variables
            values[variable["name"]] = variable.get("allValue") or found[0]


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    _ensure_api_failures(stack)
    _ensure_permission_denied(stack)
    errors = f'iceprod_dataset_status{{dataset="{stack.errors_dataset}", status="errors"}} == 1'
    stack.set_status(stack.errors_dataset, "errors")  # "Datasets needing attention" has a row
    try:
        wait_for(lambda: stack.query(errors), 30, "the errors dataset to be scraped")
        empty: list[str] = []
        evaluated = 0
        for name, dashboard in load_dashboards().items():
            values = dict(RANGE_VALUES)
            _variable_values(stack, dashboard, values)
            for panel, target in targets(dashboard):
                expr = substitute(target["expr"], values)
                evaluated += 1
                if not stack.query(expr):
                    empty.append(f"{name} / {panel['title']} [{target['refId']}]: {expr}")
    finally:
        stack.set_status(stack.errors_dataset, "processing")
    assert evaluated > 50
    assert empty == [], "queries without data:\n" + "\n".join(empty)


# ---------------------------------------------------------------------------- owners

#: (IceProd group, user) of the datasets of the owner scenarios: A and B have a receiver each
GROUP_A = ("simprod", "alice")
GROUP_B = ("filtering", "bob")
#: a group the example configuration has no receiver for: the default receiver hears of it
GROUP_OTHER = ("icetray", "carol")
DEFAULT_RECEIVER = "iceprod-operators"
#: how long "nobody else heard of it" is watched: several group_intervals (1s) and evaluations
SETTLE = 4.0


@dataclass
class Owners:
    """Prometheus and Alertmanager (shipped rules and routing) over a scripted exporter."""

    exporter: ScriptedExporter
    prometheus: Server
    alertmanager: Server
    webhook: Webhook

    def logs(self) -> str:
        """Notifications so far and the servers' log tails, for failure messages."""
        tails = [s.log_tail(3000) for s in (self.prometheus, self.alertmanager)]
        return "\n".join(["notifications:", self.webhook.summary(), *tails])

    def alertmanager_alerts(self, alertname: str) -> list[dict[str, Any]]:
        """Alerts Alertmanager holds now (active or suppressed) by name."""
        status, body = http_get(self.alertmanager.url + "/api/v2/alerts")
        assert status == 200, body[:300]
        alerts: list[dict[str, Any]] = json.loads(body)
        return [a for a in alerts if a["labels"].get("alertname") == alertname]

    def receivers_of(self, alertname: str, dataset: str, since: float) -> set[str]:
        """Receivers that were notified of a dataset's alert (firing) since a time."""
        return {note.receiver for note, _ in self.notified(alertname, dataset, "firing", since)}

    def notified(
        self, alertname: str, dataset: str, status: str, since: float
    ) -> list[tuple[Notification, dict[str, Any]]]:
        """Notifications of a dataset's alert in a status since a time."""
        return self.webhook.find(alertname, {"dataset": dataset}, status, since)

    def wait_notified(
        self, alertname: str, dataset: str, status: str, since: float
    ) -> tuple[Notification, dict[str, Any]]:
        """The first such notification, once it arrived."""
        found = wait_for(
            lambda: self.notified(alertname, dataset, status, since),
            ALERT_TIMEOUT,
            f"{alertname} of dataset {dataset} {status} at a webhook",
            diagnose=self.logs,
        )
        note, alert = found[0]
        return note, alert


def _dataset(number: int, status: str, owner: tuple[str, str]) -> Dataset:
    group, username = owner
    return Dataset(
        dataset_id=f"ds{number}",
        number=number,
        status=status,
        description=f"e2e dataset {number} of {group}",
        group=group,
        username=username,
    )


@pytest.fixture(scope="module")
def owners(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Owners]:
    workdir = tmp_path_factory.mktemp("monitoring-owners")
    exporter = ScriptedExporter()
    exporter.show()
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(exporter.stop)
        webhook = cleanup.enter_context(webhook_server())
        am_config = workdir / "alertmanager.yml"
        _alertmanager_config(am_config, webhook)
        alertmanager = start_alertmanager(am_config, workdir)
        cleanup.callback(alertmanager.stop)
        prom_config = workdir / "prometheus.yml"
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(p) for p in _fast_rules(workdir)],
            "alerting": {
                "alertmanagers": [
                    {"static_configs": [{"targets": [alertmanager.url.removeprefix("http://")]}]}
                ]
            },
            "scrape_configs": [
                {"job_name": EXPORTER_JOB, "static_configs": [{"targets": [exporter.target]}]}
            ],
        }
        prom_config.write_text(yaml.safe_dump(config), encoding="utf-8")
        prometheus = start_prometheus(prom_config, workdir, ("--rules.alert.resend-delay=1s",))
        cleanup.callback(prometheus.stop)
        stack = Owners(exporter, prometheus, alertmanager, webhook)
        wait_for(
            lambda: prom_query(prometheus.url, "iceprod_up == 1"),
            30,
            "Prometheus to scrape the scripted exporter",
            diagnose=stack.logs,
        )
        yield stack


def test_a_datasets_alerts_reach_only_the_receiver_of_its_group(owners: Owners) -> None:
    since = time.time()
    owner = {"71001": GROUP_A, "71002": GROUP_B, "71003": GROUP_OTHER}
    expected = {
        "71001": "iceprod-group-simprod",
        "71002": "iceprod-group-filtering",
        "71003": DEFAULT_RECEIVER,
    }
    in_errors = [_dataset(int(n), "errors", owner[n]) for n in owner]
    quiet = _dataset(71004, "processing", GROUP_A)
    owners.exporter.show(*in_errors, quiet)
    try:
        for number, receiver in expected.items():
            note, alert = owners.wait_notified("IceProdDatasetErrors", number, "firing", since)
            assert note.receiver == receiver, owners.logs()
            assert note.payload["groupLabels"] == {
                "alertname": "IceProdDatasetErrors",
                "dataset": number,
            }
            group, username = owner[number]
            assert alert["labels"]["group"] == group
            assert alert["labels"]["username"] == username
            assert (
                f"e2e dataset {number} of {group}; group {group}, user {username}"
                in (alert["annotations"]["description"])
            )
        time.sleep(SETTLE)  # anybody else would have heard by now
        for number, receiver in expected.items():
            assert owners.receivers_of("IceProdDatasetErrors", number, since) == {receiver}
        assert not owners.webhook.find("IceProdDatasetErrors", {"dataset": "71004"}, "firing", 0)
    finally:
        owners.exporter.show(*(_dataset(int(n), "processing", owner[n]) for n in owner), quiet)
    for number, receiver in expected.items():
        note, _ = owners.wait_notified("IceProdDatasetErrors", number, "resolved", since)
        assert note.receiver == receiver


def test_dataset_alerts_reach_nobody_while_iceprod_is_down(owners: Owners) -> None:
    a, b = _dataset(72001, "processing", GROUP_A), _dataset(72002, "processing", GROUP_B)
    owners.exporter.show(a, b)
    down_since = time.time()
    owners.exporter.show(a, b, up=False)  # IceProd unreachable: the last values are served
    errors = [_dataset(d.number, "errors", (d.group, d.username)) for d in (a, b)]
    try:
        note, _ = wait_for(
            lambda: owners.webhook.find("IceProdAPIDown", {}, "firing", down_since),
            ALERT_TIMEOUT,
            "IceProdAPIDown at a webhook",
            diagnose=owners.logs,
        )[0]
        assert note.receiver == "iceprod-oncall"
        # while it fires, the datasets go into errors (as the last poll before it saw them)
        since = time.time()
        owners.exporter.show(*errors, up=False)

        def suppressed() -> bool:
            held = owners.alertmanager_alerts("IceProdDatasetErrors")
            mine = [h for h in held if h["labels"]["dataset"] in ("72001", "72002")]
            return len(mine) == 2 and all(
                h["status"]["state"] == "suppressed" and h["status"]["inhibitedBy"] for h in mine
            )

        wait_for(suppressed, ALERT_TIMEOUT, "both alerts inhibited", diagnose=owners.logs)
        time.sleep(SETTLE)
        for number in ("72001", "72002"):
            assert owners.receivers_of("IceProdDatasetErrors", number, since) == set(), (
                owners.logs()
            )
    finally:
        owners.exporter.show(*errors, up=True)  # IceProd answers again
    # the mute lifts: each owner hears of their dataset, nobody else does
    for number, receiver in (
        ("72001", "iceprod-group-simprod"),
        ("72002", "iceprod-group-filtering"),
    ):
        owners.wait_notified("IceProdDatasetErrors", number, "firing", since)
        assert owners.receivers_of("IceProdDatasetErrors", number, since) == {receiver}
    wait_for(
        lambda: owners.webhook.find("IceProdAPIDown", {}, "resolved", down_since),
        ALERT_TIMEOUT,
        "IceProdAPIDown resolved",
        diagnose=owners.logs,
    )
    owners.exporter.show(a, b)
