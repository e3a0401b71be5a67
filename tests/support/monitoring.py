"""Shared helpers for the monitoring tests (rules, dashboards, end to end).

* :func:`tool` finds promtool / prometheus / alertmanager / amtool and installs the Debian
  packages ``prometheus`` and ``prometheus-alertmanager`` once (under a file lock) when they are
  missing. It never skips: a machine without the tools and without a way to install them fails.
* :func:`start_prometheus` / :func:`start_alertmanager` run the real servers bound to 127.0.0.1
  only, with their data in a temporary directory, and check that they bound nothing else.
* :func:`scan` parses an expression with ``promql-parser`` (the Rust PromQL parser) and walks
  its AST for the metric selectors, label matchers, grouping labels and function calls, so that
  dashboards and rules are checked against the metric table
  (:data:`iceprod_exporter.exposition.metrics.SPECS`) without a server: :func:`check_expression`
  (known
  metrics, labels and values; what reads differently on Prometheus 2 and 3) and
  :func:`replica_problems` (raw IceProd series summed or shown without first being reduced to
  one copy per HA replica).
* The dashboards' Grafana variables are substituted by :func:`substitute` before parsing.
* :class:`ScriptedExporter` serves the exporter's own exposition of a snapshot a test sets, for
  alert scenarios whose order of events the simulated IceProd cannot stage.
* :class:`OtherExporters` serves what IceProd's grid daemon and condor_history expose (their
  real metric names and labels), for the rules and panels that read or join them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import promql_parser
import yaml
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from iceprod_exporter.exposition.formats import CONTENT_TYPES, Format, encode
from iceprod_exporter.exposition.metrics import SPECS, Group, Kind
from iceprod_exporter.model.snapshot import (
    DATASET_STATUSES,
    JOB_STATUSES,
    RESOURCES,
    TASK_STATUSES,
    Dataset,
    Snapshot,
    frozen_map,
)
from iceprod_simulator.service import ServerThread
from tests.support.collector_oracle import SnapshotCollector
from tests.support.debian import ToolError, apt_install, refuse_in_unit_tier

# tests/support/ holds these; the aliases re-export them to tests that import them from here
from tests.support.exporter import free_port as free_port
from tests.support.exporter import http_get as http_get
from tests.support.exporter import wait_for as wait_for

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULE_FILES = (PROMETHEUS_DIR / "recording.yaml", PROMETHEUS_DIR / "alerts.yaml")
RULE_TEST_FILES = (
    PROMETHEUS_DIR / "tests" / "recording-test.yaml",
    PROMETHEUS_DIR / "tests" / "alerts-test.yaml",
)
DASHBOARD_DIR = ROOT / "grafana" / "dashboards"
EXPORTER_JOB = "iceprod-exporter"

# --------------------------------------------------------------------------- tools

#: tool -> (Debian package, names the binary has: Debian's first, upstream's second)
TOOLS: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "promtool": ("prometheus", ("promtool",)),
    "prometheus": ("prometheus", ("prometheus",)),
    "alertmanager": ("prometheus-alertmanager", ("prometheus-alertmanager", "alertmanager")),
    "amtool": ("prometheus-alertmanager", ("amtool",)),
}
#: the oldest versions the rules, tests and flags are written for (Debian 12's packages)
MIN_VERSIONS: Mapping[str, tuple[int, int]] = {
    "promtool": (2, 42),
    "prometheus": (2, 42),
    "alertmanager": (0, 25),
    "amtool": (0, 25),
}
_SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/bin", "/usr/local/bin", "/usr/sbin"]
)


def _which(names: tuple[str, ...]) -> Path | None:
    for name in names:
        found = shutil.which(name, path=_SEARCH_PATH)
        if found:
            return Path(found)
    return None


def tool(name: str) -> Path:
    """Return the path of a monitoring tool, installing its Debian package if needed."""
    package, names = TOOLS[name]
    refuse_in_unit_tier(f"{name} (Debian package {package})")
    found = _which(names)
    if found is None:
        apt_install(*sorted({p for p, _ in TOOLS.values()}))
        found = _which(names)
    if found is None:
        raise ToolError(f"{name}: package {package} is installed but none of {names} is on PATH")
    return found


_VERSION_RE = re.compile(r"version (\d+)\.(\d+)\.(\d+)(\S*)")


def tool_version(name: str) -> str:
    """Return the tool's version string (e.g. ``2.42.0+ds``), checked against the minimum."""
    done = subprocess.run(
        [str(tool(name)), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    text = done.stdout + done.stderr
    match = _VERSION_RE.search(text)
    if match is None:
        raise ToolError(f"{name} --version printed no version: {text[:300]!r}")
    major, minor = int(match.group(1)), int(match.group(2))
    if (major, minor) < MIN_VERSIONS[name]:
        want = ".".join(map(str, MIN_VERSIONS[name]))
        raise ToolError(f"{name} {match.group(0)} is older than the required {want}")
    return f"{match.group(1)}.{match.group(2)}.{match.group(3)}{match.group(4)}"


def run_tool(name: str, *args: str, cwd: Path | None = None, timeout: float = 120) -> str:
    """Run a tool; fail with its output unless it exits 0. Returns stdout + stderr."""
    done = subprocess.run(
        [str(tool(name)), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise AssertionError(f"{name} {' '.join(args)} exited {done.returncode}:\n{output}")
    return output


# --------------------------------------------------------------------------- servers


def _with_descendants(pid: int) -> list[int]:
    """The process and every process below it (the exporter serves HTTP from a child)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo.extend(int(child) for child in children.read_text().split())
    return found


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """Return the (address, port) pairs a process and its children listen on, from /proc."""
    inodes = set()
    for member in _with_descendants(pid):
        with contextlib.suppress(OSError):  # a child may be gone meanwhile
            for fd in Path(f"/proc/{member}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    found: set[tuple[str, int]] = set()
    for table, width in (("tcp", 8), ("tcp6", 32), ("udp", 8), ("udp6", 32)):
        path = Path(f"/proc/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            cols = line.split()
            local, state, inode = cols[1], cols[3], cols[9]
            listening = state == "0A" if table.startswith("tcp") else state == "07"
            if inode not in inodes or not listening:
                continue
            hex_addr, hex_port = local.split(":")
            assert len(hex_addr) == width
            raw = bytes.fromhex(hex_addr)
            # /proc stores each 32-bit word in host (little-endian) order
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            family = socket.AF_INET if width == 8 else socket.AF_INET6
            found.add((socket.inet_ntop(family, words), int(hex_port, 16)))
    return found


def assert_loopback_only(proc: subprocess.Popen[bytes], name: str) -> set[tuple[str, int]]:
    """Fail unless every socket the process (or a child) listens on is bound to 127.0.0.1."""
    addresses = listening_addresses(proc.pid)
    outside = {a for a in addresses if a[0] != "127.0.0.1"}
    assert addresses, f"{name} listens on nothing"
    assert not outside, f"{name} listens beyond 127.0.0.1: {sorted(outside)}"
    return addresses


@dataclass
class Server:
    """A server process started by a test."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    workdir: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def log_tail(self, chars: int = 4000) -> str:
        """Return the end of the server's log, for failure messages."""
        try:
            return f"--- {self.name} log ({self.log}) ---\n" + self.log.read_text()[-chars:]
        except OSError:
            return f"--- {self.name}: no log ---"

    def stop(self) -> None:
        """Terminate the process (and kill it if it does not exit in 10 s)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _start(name: str, argv: list[str], url: str, workdir: Path, ready_path: str) -> Server:
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    server = Server(name, proc, url, log, workdir)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited with {proc.returncode}\n{server.log_tail()}")
        return http_get(url + ready_path, timeout=2)[0] == 200

    try:
        wait_for(ready, 30, f"{name} to be ready at {url}", diagnose=server.log_tail)
        assert_loopback_only(proc, name)
    except BaseException:
        server.stop()
        raise
    return server


def start_prometheus(config: Path, workdir: Path, extra_args: tuple[str, ...] = ()) -> Server:
    """Start Prometheus on 127.0.0.1 with a temporary TSDB; ready and loopback-only on return."""
    port = free_port()
    data = workdir / "prometheus-data"
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        str(tool("prometheus")),
        f"--config.file={config}",
        f"--storage.tsdb.path={data}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=info",
        *extra_args,
    ]
    return _start("prometheus", argv, f"http://127.0.0.1:{port}", workdir, "/-/ready")


def start_alertmanager(config: Path, workdir: Path) -> Server:
    """Start Alertmanager on 127.0.0.1 with gossip disabled; ready and loopback-only on return."""
    port = free_port()
    data = workdir / "alertmanager-data"
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        str(tool("alertmanager")),
        f"--config.file={config}",
        f"--storage.path={data}",
        f"--web.listen-address=127.0.0.1:{port}",
        # an empty address disables the cluster (gossip) listener on 0.0.0.0:9094
        "--cluster.listen-address=",
        "--log.level=info",
    ]
    return _start("alertmanager", argv, f"http://127.0.0.1:{port}", workdir, "/-/ready")


def serve_metrics(
    page: Callable[[str], tuple[int, bytes]], content_type: str
) -> tuple[ThreadingHTTPServer, ServerThread]:
    """A metrics endpoint on 127.0.0.1: ``page(path)`` gives each GET's status and body."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = page(self.path)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    return httpd, ServerThread(httpd)


class ScriptedExporter:
    """The exporter's own collector (the metric table, the exposition) over a scripted snapshot.

    A test sets what IceProd looks like (:meth:`show`) and Prometheus scrapes exactly what the
    exporter would serve for it, at once, without polling: for alerts whose order matters (an
    outage first, then datasets in errors) and that the simulated IceProd cannot stage.
    """

    def __init__(self) -> None:
        self._snapshot = Snapshot()
        self._last_success: float | None = None
        registry = CollectorRegistry(auto_describe=False)
        # never stale: show() says whether IceProd answered; the values stay, as in an outage
        SnapshotCollector(lambda: self._snapshot, max_staleness=1e9, registry=registry)

        def page(path: str) -> tuple[int, bytes]:
            body = encode(registry, Format.TEXT) if path == "/metrics" else b""
            return (200 if body else 404), body

        self._httpd, self._serving = serve_metrics(page, CONTENT_TYPES[Format.TEXT])

    @property
    def target(self) -> str:
        """host:port for a scrape config."""
        return f"127.0.0.1:{self._httpd.server_address[1]}"

    def show(self, *datasets: Dataset, up: bool = True) -> None:
        """Serve these datasets from now on; ``up=False``: IceProd unreachable, last values kept."""
        now = time.time()
        if up:
            self._last_success = now
        self._snapshot = Snapshot(
            up=up,
            polled_at=now,
            last_success=self._last_success,
            datasets=frozen_map({d.dataset_id: d for d in datasets}),
        )

    def stop(self) -> None:
        """Stop serving and close the port."""
        self._serving.close(5)


class OtherExporters:
    """IceProd's grid daemon and condor_history_to_prometheus.py, as their code defines metrics.

    ``/grid`` serves what a grid daemon (iceprod.server, condor plugin, 3.2.43) exposes:
    ``iceprod_info{type="grid"}`` and ``iceprod_grid_*`` with its GlobalLabels site, type and
    gpu; ``/condor-history`` what condor_job_metrics.py (WIPACrepo/monitoring-scripts) exposes.
    Every scrape counts a little more work of one dataset and task name, so rates over them
    have values. ``grid_down`` answers ``/grid`` with 503, as a dead daemon fails its scrape.
    """

    def __init__(self, dataset: str, task_name: str, site: str = "NPX") -> None:
        self.grid_down = False
        grid, condor = CollectorRegistry(), CollectorRegistry()
        Info("iceprod", "IceProd information", registry=grid).info(
            {
                "name": site,
                "type": "grid",
                "queue_type": "condor",
                "version": "3.2.43",
                "exclusive": "False",
            }
        )
        common = {"site": site, "type": "condor", "gpu": "0"}
        on_queue = Gauge("iceprod_grid_tasks", "tasks on the queue", list(common), registry=grid)
        on_queue.labels(**common).set(12)
        queue = Gauge("iceprod_grid_queue_num", "queue", [*common, "status"], registry=grid)
        queue.labels(**common, status="idle").set(3)
        queue.labels(**common, status="processing").set(9)
        submitted = Counter(
            "iceprod_grid_submit_datasets",
            "submits",
            [*common, "dataset", "task", "success"],
            registry=grid,
        )
        outcomes = [
            Histogram(f"iceprod_grid_task_{o}", o, list(common), registry=grid).labels(**common)
            for o in ("reset", "failure", "success")
        ]
        labels = {
            "owner": "ice3simusr",
            "site": site,
            "schedd": "submit-1.icecube.wisc.edu",
            "GPUDeviceName": "None",
            "kind": "CPU",
            "IceProdDataset": dataset,
            "IceProdTaskName": task_name,
            "MATCH_EXP_JOBGLIDEIN_ResourceName": site,
        }
        names = [*labels, "usage"]
        walltime = Counter("condor_job_walltime_hours", "hours", names, registry=condor)
        jobs = Counter("condor_job_count", "jobs", names, registry=condor)
        memory = [
            Histogram(f"condor_job_mem_{kind}", kind, names, registry=condor)
            for kind in ("used", "req")
        ]

        def grid_scraped() -> None:
            submitted.labels(**common, dataset=dataset, task=task_name, success="success").inc(2)
            for index, outcome in enumerate(outcomes):
                outcome.observe(0.1 * (index + 1))

        def condor_scraped() -> None:
            for usage, hours in (("goodput", 1.5), ("badput", 0.5)):
                walltime.labels(**labels, usage=usage).inc(hours)
                jobs.labels(**labels, usage=usage).inc()
            memory[0].labels(**labels, usage="goodput").observe(2.0)
            memory[1].labels(**labels, usage="goodput").observe(4.0)

        pages = {"/grid": (grid, grid_scraped), "/condor-history": (condor, condor_scraped)}
        owner = self

        def page(path: str) -> tuple[int, bytes]:
            found = pages.get(path)
            if found is None or (path == "/grid" and owner.grid_down):
                return (503 if found else 404), b""
            registry, scraped = found
            scraped()
            return 200, generate_latest(registry)

        self._httpd, self._serving = serve_metrics(page, CONTENT_TYPE_LATEST)

    @property
    def target(self) -> str:
        """host:port for a scrape config (metrics paths /grid and /condor-history)."""
        return f"127.0.0.1:{self._httpd.server_address[1]}"

    def stop(self) -> None:
        """Stop serving and close the port."""
        self._serving.close(5)


def prom_query(prometheus_url: str, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    """Run an instant query; return the result vector (raises with the error on failure)."""
    params = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    url = prometheus_url + "/api/v1/query?" + urllib.parse.urlencode(params)
    status, body = http_get(url, timeout=10)
    try:
        payload = json.loads(body)
    except json.JSONDecodeError:
        raise AssertionError(f"query {expr!r}: HTTP {status}, not JSON: {body[:300]!r}") from None
    if status != 200 or payload.get("status") != "success":
        raise AssertionError(f"query {expr!r} failed: HTTP {status}: {payload}")
    data = payload["data"]
    result = data["result"]
    if data["resultType"] == "scalar":
        return [{"metric": {}, "value": result}]
    return list(result)


# --------------------------------------------------------------------------- metric contract

#: labels Prometheus adds to every scraped series (job, instance) plus the histogram bucket label
TARGET_LABELS = frozenset({"job", "instance"})
#: target labels that tell the copies of one series from HA replicas apart: `instance`, and `pod`
#: under Kubernetes service discovery (the ServiceMonitor). Rules and dashboards may name them in
#: grouping clauses (`max without (instance, pod)`) though a plain scrape config has no `pod`.
REPLICA_LABELS = frozenset({"instance", "pod"})
#: metrics of the IceProd group that describe one exporter instance, not IceProd's state: every
#: replica has its own value, and they are meant to be read per instance
PER_INSTANCE = frozenset({"iceprod_up", "iceprod_exporter_last_successful_poll_timestamp_seconds"})
#: IceProd's state: identical replicas export identical copies of these (differing only in the
#: REPLICA_LABELS), so a query must reduce them to one copy before it sums or shows them
REPLICATED = frozenset(
    spec.name
    for spec in SPECS
    if spec.group is not Group.EXPORTER and spec.name not in PER_INSTANCE
)
#: aggregations that keep one copy of identical series (when they do not group by a replica label)
DEDUPLICATING = frozenset({"max", "min", "topk", "bottomk", "group"})

#: reason values of iceprod_exporter_api_request_failures_total
API_FAILURE_REASONS = frozenset(
    {
        "timeout",
        "connection",
        "unauthorized",
        "forbidden",
        "not_found",
        "overloaded",
        "server_error",
        "client_error",
        "bad_response",
        "token",
    }
)
#: reason values of iceprod_exporter_token_refresh_failures_total
TOKEN_FAILURE_REASONS = frozenset({"timeout", "connection", "rejected", "bad_response", "config"})


@dataclass(frozen=True)
class MetricInfo:
    """What a metric name may be used with: its labels and type, and known label values."""

    name: str
    kind: str  # counter, gauge, histogram-bucket, ... (see below)
    labels: frozenset[str]
    values: Mapping[str, frozenset[str]] = field(default_factory=dict)


def _status_values(name: str) -> frozenset[str] | None:
    if "task" in name and "tasks_submitted" not in name:
        return frozenset(TASK_STATUSES)
    if "jobs" in name and "jobs_submitted" not in name:
        return frozenset(JOB_STATUSES)
    if name in ("iceprod_datasets", "iceprod_dataset_status"):
        return frozenset(DATASET_STATUSES)
    return None


def _add(
    known: dict[str, MetricInfo],
    name: str,
    kind: Kind,
    labels: frozenset[str],
    values: Mapping[str, frozenset[str]],
) -> None:
    """Add a metric's series names: a histogram's _bucket, _sum and _count, else the name."""
    labels |= TARGET_LABELS
    if kind is Kind.HISTOGRAM:
        known[name + "_bucket"] = MetricInfo(name + "_bucket", "bucket", labels | {"le"}, values)
        for suffix in ("_sum", "_count"):
            known[name + suffix] = MetricInfo(name + suffix, "counter", labels, values)
    else:
        counter = "counter" if kind is Kind.COUNTER else "gauge"
        known[name] = MetricInfo(name, counter, labels, values)


#: every series of IceProd's grid daemons (iceprod.server and its condor plugin, 3.2.43) carries
#: these GlobalLabels; their task name label is ``task``, their dataset label the number
GRID_LABELS = frozenset({"site", "type", "gpu"})
#: labels of condor_job_metrics.py (WIPACrepo/monitoring-scripts), which
#: condor_history_to_prometheus.py fills from each finished HTCondor job's classad:
#: IceProdDataset is the dataset number, "None" on jobs IceProd did not submit
CONDOR_LABELS = frozenset(
    {
        "owner",
        "site",
        "schedd",
        "GPUDeviceName",
        "usage",
        "kind",
        "IceProdDataset",
        "IceProdTaskName",
        "MATCH_EXP_JOBGLIDEIN_ResourceName",
    }
)
_CONDOR_VALUES = {
    "usage": frozenset({"goodput", "badput"}),
    "kind": frozenset({"CPU", "GPU"}),
}
#: series of the other IceProd exporters the mixin reads (names as scraped: a counter of
#: prometheus_client gets ``_total``): (name, kind, labels, known label values)
OTHER_EXPORTERS: tuple[tuple[str, Kind, frozenset[str], Mapping[str, frozenset[str]]], ...] = (
    # prometheus_client Info("iceprod") of every IceProd server (the services server says
    # "api" too); the grid daemon's carries these labels
    (
        "iceprod_info",
        Kind.GAUGE,
        frozenset({"name", "type", "queue_type", "version", "exclusive"}),
        {"type": frozenset({"api", "grid", "cron", "website", "credentials"})},
    ),
    ("iceprod_grid_tasks", Kind.GAUGE, GRID_LABELS, {}),
    (
        "iceprod_grid_queue_num",
        Kind.GAUGE,
        GRID_LABELS | {"status"},
        {"status": frozenset({"idle", "processing"})},
    ),
    (
        "iceprod_grid_submit_datasets_total",
        Kind.COUNTER,
        GRID_LABELS | {"dataset", "task", "success"},
        {"success": frozenset({"success", "fail"})},
    ),
    *(
        (f"iceprod_grid_task_{outcome}", Kind.HISTOGRAM, GRID_LABELS, {})
        for outcome in ("idle", "processing", "reset", "failure", "success")
    ),
    ("condor_job_walltime_hours_total", Kind.COUNTER, CONDOR_LABELS, _CONDOR_VALUES),
    ("condor_job_resource_hours_total", Kind.COUNTER, CONDOR_LABELS, _CONDOR_VALUES),
    ("condor_job_count_total", Kind.COUNTER, CONDOR_LABELS, _CONDOR_VALUES),
    ("condor_job_mem_req", Kind.HISTOGRAM, CONDOR_LABELS, _CONDOR_VALUES),
    ("condor_job_mem_used", Kind.HISTOGRAM, CONDOR_LABELS, _CONDOR_VALUES),
    ("condor_job_resource_req", Kind.HISTOGRAM, CONDOR_LABELS, _CONDOR_VALUES),
)


def exporter_metrics() -> dict[str, MetricInfo]:
    """Every series name the exporter exposes, from the metric table (histograms expanded)."""
    known: dict[str, MetricInfo] = {}
    for spec in SPECS:
        values: dict[str, frozenset[str]] = {}
        statuses = _status_values(spec.name)
        if "status" in spec.labels and statuses is not None:
            values["status"] = statuses
        if "resource" in spec.labels:
            values["resource"] = frozenset(RESOURCES)
        if spec.name == "iceprod_exporter_api_request_failures_total":
            values["reason"] = API_FAILURE_REASONS
        if spec.name == "iceprod_exporter_token_refresh_failures_total":
            values["reason"] = TOKEN_FAILURE_REASONS
        _add(known, spec.name, spec.kind, frozenset(spec.labels), values)
    known["up"] = MetricInfo("up", "gauge", TARGET_LABELS)
    # prometheus_client's process collector (setting process_metrics, on by default)
    known["process_resident_memory_bytes"] = MetricInfo(
        "process_resident_memory_bytes", "gauge", TARGET_LABELS
    )
    return known


def scraped_metrics() -> dict[str, MetricInfo]:
    """The exporter's series and those of the other IceProd exporters the mixin joins."""
    known = exporter_metrics()
    for name, kind, labels, values in OTHER_EXPORTERS:
        _add(known, name, kind, labels, values)
    return known


def load_rules(path: Path) -> list[dict[str, Any]]:
    """Return every rule of a rule file, in order."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def known_metrics() -> dict[str, MetricInfo]:
    """Exporter metrics, ``up`` and the recorded series of recording.yaml with their labels.

    A recorded series keeps the labels of its ``by (...)`` clauses when it has any, no labels
    when it aggregates without them, and otherwise the labels of its inputs; its label values
    are those of its inputs.
    """
    known = scraped_metrics()
    for rule in load_rules(PROMETHEUS_DIR / "recording.yaml"):
        scanned = scan(rule["expr"])
        inputs = [known[s.name] for s in scanned.selectors if s.name in known]
        input_labels: frozenset[str] = frozenset().union(*(i.labels for i in inputs))
        if scanned.by_labels:
            labels = frozenset(scanned.by_labels)
        elif scanned.aggregations:
            labels = frozenset()
        else:
            labels = input_labels
        values: dict[str, frozenset[str]] = {}
        for info in inputs:
            for label, allowed in info.values.items():
                if label in labels:
                    values[label] = values.get(label, frozenset()) | allowed
        known[rule["record"]] = MetricInfo(rule["record"], "gauge", labels, values)
    return known


# --------------------------------------------------------------------------- PromQL, parsed

#: functions whose (first) series argument must be a counter, and ones that must not get one
COUNTER_FUNCTIONS = frozenset({"rate", "irate", "increase", "resets"})
GAUGE_FUNCTIONS = frozenset(
    {"deriv", "delta", "idelta", "predict_linear", "double_exponential_smoothing"}
)
#: functions that add a label to their result: the index of the argument naming it
LABEL_FUNCTIONS: Mapping[str, int] = {"label_replace": 1, "label_join": 1}
#: labels whose values Prometheus 3 writes as floats on ingestion (``le="1"`` becomes "1.0")
NORMALISED_LABELS = frozenset({"le", "quantile"})
#: labels whose values may hold a newline, which ``.`` matches on Prometheus 3 only
MULTILINE_LABELS = frozenset({"description"})
#: names Prometheus 2 can read without Prometheus 3's quoted UTF-8 syntax
LEGACY_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LEGACY_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
#: PromQL's spelling of promql-parser's match operators (which are not hashable)
_MATCH_OPS: tuple[tuple[promql_parser.MatchOp, str], ...] = (
    (promql_parser.MatchOp.Equal, "="),
    (promql_parser.MatchOp.NotEqual, "!="),
    (promql_parser.MatchOp.Re, "=~"),
    (promql_parser.MatchOp.NotRe, "!~"),
)


def _match_op(op: promql_parser.MatchOp) -> str:
    return next(text for known, text in _MATCH_OPS if op == known)


@dataclass(frozen=True)
class Matcher:
    """One label matcher of a selector."""

    label: str
    op: str
    value: str


@dataclass(frozen=True)
class Selector:
    """A metric selector: its name, its matchers and the function calls around it."""

    name: str
    matchers: tuple[Matcher, ...]
    #: names of the enclosing function calls, innermost last
    calls: tuple[str, ...]

    @property
    def function(self) -> str | None:
        """The function the selector is (directly or through aggregations) an argument of."""
        return self.calls[-1] if self.calls else None


@dataclass
class Scan:
    """What :func:`scan` found in one expression."""

    selectors: list[Selector] = field(default_factory=list)
    #: labels named in by/without/on/ignoring/group_left/group_right clauses
    grouping_labels: set[str] = field(default_factory=set)
    #: labels named in by (...) clauses only (what an aggregation keeps)
    by_labels: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    aggregations: set[str] = field(default_factory=set)
    #: labels label_replace()/label_join() add
    created_labels: set[str] = field(default_factory=set)
    #: functions Prometheus 2 lacks and Prometheus 3 hides behind a feature flag
    experimental: set[str] = field(default_factory=set)


Ancestors = tuple[promql_parser.Expr, ...]


def parse(expr: str) -> promql_parser.Expr:
    """The AST of an expression; ``ValueError`` with the parser's message when it is no PromQL."""
    try:
        return promql_parser.parse(expr)
    except ValueError as exc:
        raise ValueError(f"cannot parse {expr!r}: {exc}") from None


def _children(node: promql_parser.Expr) -> list[promql_parser.Expr]:
    if isinstance(node, promql_parser.AggregateExpr):
        param = [node.param] if isinstance(node.param, promql_parser.Expr) else []
        return [*param, node.expr]
    if isinstance(node, promql_parser.BinaryExpr):
        return [node.lhs, node.rhs]
    if isinstance(
        node, promql_parser.UnaryExpr | promql_parser.ParenExpr | promql_parser.SubqueryExpr
    ):
        return [node.expr]
    if isinstance(node, promql_parser.Call):
        return [arg for arg in node.args if isinstance(arg, promql_parser.Expr)]
    if isinstance(node, promql_parser.MatrixSelector):
        return [node.vector_selector]
    return []


def walk(tree: promql_parser.Expr) -> Iterator[tuple[promql_parser.Expr, Ancestors]]:
    """Every node of an AST with its ancestors (outermost first), depth first."""
    todo: list[tuple[promql_parser.Expr, Ancestors]] = [(tree, ())]
    while todo:
        node, ancestors = todo.pop()
        yield node, ancestors
        todo.extend((child, (*ancestors, node)) for child in reversed(_children(node)))


def _selector(node: promql_parser.VectorSelector, ancestors: Ancestors) -> Selector:
    matchers = tuple(Matcher(m.name, _match_op(m.op), m.value) for m in node.matchers.matchers)
    name = node.name or next(
        (m.value for m in matchers if m.label == "__name__" and m.op == "="), None
    )
    if name is None:
        raise ValueError("selector without a metric name")
    calls = tuple(a.func.name for a in ancestors if isinstance(a, promql_parser.Call))
    return Selector(name, matchers, calls)


def scan(expr: str) -> Scan:
    """Parse a PromQL expression (promql-parser) and list its selectors, labels and functions."""
    result = Scan()
    for node, ancestors in walk(parse(expr)):
        if isinstance(node, promql_parser.VectorSelector):
            result.selectors.append(_selector(node, ancestors))
        elif isinstance(node, promql_parser.AggregateExpr):
            result.aggregations.add(str(node.op))
            if node.modifier is not None:
                result.grouping_labels |= set(node.modifier.labels)
                if node.modifier.type == promql_parser.AggModifierType.By:
                    result.by_labels |= set(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            if node.modifier.matching is not None:
                result.grouping_labels |= set(node.modifier.matching.labels)
            result.grouping_labels |= set(node.modifier.group_labels or ())
        elif isinstance(node, promql_parser.Call):
            result.functions.add(node.func.name)
            if node.func.experimental:
                result.experimental.add(node.func.name)
            if node.func.name in LABEL_FUNCTIONS:
                created = node.args[LABEL_FUNCTIONS[node.func.name]]
                if isinstance(created, promql_parser.StringLiteral):
                    result.created_labels.add(created.val)
    return result


def _value_problems(sel: Selector, m: Matcher, info: MetricInfo) -> list[str]:
    """Known values of a label (statuses, reasons), and matchers that Prometheus 3 reads apart."""
    problems = []
    if m.label in NORMALISED_LABELS:
        problems.append(
            f"{sel.name}{{{m.label}{m.op}{m.value!r}}}: {m.label} values are floats on "
            'Prometheus 3 ("1" is read as "1.0"): group by it, never match it'
        )
    if m.op in ("=~", "!~") and m.label in MULTILINE_LABELS:
        problems.append(
            f"{sel.name}{{{m.label}{m.op}...}}: '.' matches a newline on Prometheus 3 only"
        )
    allowed = info.values.get(m.label)
    if allowed is None or m.op not in ("=", "=~"):
        return problems
    wanted = [m.value] if m.op == "=" else m.value.split("|")
    for value in wanted:
        if re.fullmatch(r"[A-Za-z0-9_]+", value) and value not in allowed:
            problems.append(
                f"{sel.name}{{{m.label}=...}}: {value!r} is not one of {sorted(allowed)}"
            )
    return problems


def _kind_problems(sel: Selector, info: MetricInfo) -> list[str]:
    """Counters only in rate() & co., gauges only in deriv() & co., buckets in quantiles."""
    if sel.function in COUNTER_FUNCTIONS and info.kind not in ("counter", "bucket"):
        return [f"{sel.function}() of {sel.name}, a {info.kind}"]
    if sel.function in GAUGE_FUNCTIONS and info.kind != "gauge":
        return [f"{sel.function}() of {sel.name}, a {info.kind}"]
    if "histogram_quantile" in sel.calls and info.kind != "bucket":
        return [f"histogram_quantile() of {sel.name}, not a _bucket"]
    return []


def check_expression(expr: str, known: Mapping[str, MetricInfo]) -> list[str]:
    """The problems of one PromQL expression against the metric contract and Prometheus 2 and 3.

    Unknown metrics, labels of no metric, label values that no series has, counter functions of
    gauges and the reverse, and what reads differently on the two major versions: literal
    ``le``/``quantile`` values, regexes over labels that may hold newlines, experimental
    functions (``holt_winters`` is no function of Prometheus 3 at all: the parser refuses it)
    and names that need Prometheus 3's UTF-8 quoting.
    """
    try:
        scanned = scan(expr)
    except ValueError as exc:
        return [str(exc)]
    problems = [
        f"{name}() is experimental (Prometheus 3 only, behind a flag)"
        for name in sorted(scanned.experimental)
    ]
    if not scanned.selectors and not scanned.functions & {"vector", "time"}:
        problems.append("no metric")
    used_labels: set[str] = set(scanned.created_labels)
    for sel in scanned.selectors:
        if not LEGACY_METRIC_NAME.fullmatch(sel.name):
            problems.append(f"{sel.name!r} needs Prometheus 3's quoted UTF-8 names")
        info = known.get(sel.name)
        if info is None:
            problems.append(f"unknown metric {sel.name!r}")
            continue
        used_labels |= info.labels
        for m in sel.matchers:
            if m.label == "__name__":
                continue
            if m.label not in info.labels:
                problems.append(f"{sel.name} has no label {m.label!r}")
                continue
            problems += _value_problems(sel, m, info)
        problems += _kind_problems(sel, info)
    for label in scanned.grouping_labels:
        if not LEGACY_LABEL_NAME.fullmatch(label):
            problems.append(f"label {label!r} needs Prometheus 3's quoted UTF-8 names")
    unknown = scanned.grouping_labels - used_labels - TARGET_LABELS - REPLICA_LABELS
    if unknown:
        problems.append(f"grouping by {sorted(unknown)}, labels of no metric")
    return [f"{problem} (in {expr!r})" for problem in problems]


def replica_problems(expr: str) -> list[str]:
    """Raw IceProd series (:data:`REPLICATED`) not reduced to one copy per HA replica.

    Every selector of such a series must have, as its innermost enclosing aggregation, one of
    :data:`DEDUPLICATING` that does not keep a replica label: ``max without (instance, pod)``,
    ``max by (dataset)``, ``topk by (grid) (1, ...)``, ``max(...)``. Functions in between are fine
    (``max without (instance, pod) (deriv(x[1h]))``). A ``sum``/``count``/``avg`` first, or no
    aggregation at all, counts or shows every replica's copy.
    """
    try:
        tree = parse(expr)
    except ValueError as exc:
        return [str(exc)]
    problems: list[str] = []
    for node, ancestors in walk(tree):
        if not isinstance(node, promql_parser.VectorSelector) or node.name not in REPLICATED:
            continue
        enclosing = next(
            (a for a in reversed(ancestors) if isinstance(a, promql_parser.AggregateExpr)), None
        )
        if enclosing is None:
            problems.append(f"{node.name} is not reduced to one copy per replica in {expr!r}")
            continue
        op, modifier = str(enclosing.op), enclosing.modifier
        labels = frozenset(modifier.labels) if modifier is not None else frozenset()
        by = modifier is not None and modifier.type == promql_parser.AggModifierType.By
        kept = labels & REPLICA_LABELS if by else REPLICA_LABELS - labels
        keeps_replicas = modifier is not None and bool(kept)
        if op not in DEDUPLICATING or keeps_replicas:
            mode = "" if modifier is None else ("by" if by else "without")
            problems.append(
                f"{node.name} goes through {op} {mode} ({', '.join(sorted(labels))}) "
                f"before one copy per replica is kept, in {expr!r}"
            )
    return problems


# --------------------------------------------------------------------------- dashboards

#: Grafana's built-in variables, replaced by concrete values for checks and queries
BUILTIN_VARIABLES: Mapping[str, str] = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
}


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace ``$name``, ``${name}``, ``${name:fmt}`` and ``[[name]]`` by concrete values."""
    merged = {**BUILTIN_VARIABLES, **values}

    def value(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name not in merged:
            raise KeyError(f"no value for Grafana variable ${name} in {expr!r}")
        return merged[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", value, expr)


def load_dashboards() -> dict[str, dict[str, Any]]:
    """Return every shipped dashboard by file name."""
    return {
        path.name: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(DASHBOARD_DIR.glob("*.json"))
    }


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including the ones inside collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def targets(dashboard: Mapping[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Every (panel, target) pair with a PromQL expression."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield panel, target


def variable_query(variable: Mapping[str, Any]) -> str:
    """The query string of a query variable (Grafana stores it as a string or an object)."""
    query = variable.get("query", "")
    if isinstance(query, dict):
        return str(query.get("query", ""))
    return str(query)


_LABEL_VALUES_RE = re.compile(r"^\s*label_values\((?:(?P<expr>.*),)?\s*(?P<label>\w+)\s*\)\s*$")
_QUERY_RESULT_RE = re.compile(r"^\s*query_result\((?P<expr>.*)\)\s*$")


def variable_promql(query: str) -> tuple[str, str | None]:
    """Turn a Grafana variable query into (PromQL, label whose values it lists)."""
    match = _LABEL_VALUES_RE.match(query)
    if match:
        return (match.group("expr") or "").strip(), match.group("label")
    match = _QUERY_RESULT_RE.match(query)
    if match:
        return match.group("expr").strip(), None
    raise ValueError(f"unsupported variable query {query!r}")
