"""Shared helpers for the monitoring tests (rules, dashboards, end to end).

* :func:`tool` finds promtool / prometheus / alertmanager / amtool and installs the Debian
  packages ``prometheus`` and ``prometheus-alertmanager`` once (under a file lock) when they are
  missing. It never skips: a machine without the tools and without a way to install them fails.
* :func:`start_prometheus` / :func:`start_alertmanager` run the real servers bound to 127.0.0.1
  only, with their data in a temporary directory, and check that they bound nothing else.
* A small PromQL scanner (:func:`scan`) that lists the metric selectors, label matchers, grouping
  labels and function calls of an expression, so that dashboards and rules can be checked
  against the metric table (:data:`iceprod_exporter.metrics.SPECS`) without a server.
* The dashboards' Grafana variables are substituted by :func:`substitute`.
* :func:`replica_problems` finds raw IceProd series that are summed (or shown) without first
  being reduced to one copy per HA replica.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from iceprod_exporter.metrics import SPECS, Group, Kind
from iceprod_exporter.snapshot import DATASET_STATUSES, JOB_STATUSES, TASK_STATUSES

from .debian import ToolError, apt_install, refuse_in_unit_tier

# tests/support.py holds these; the aliases re-export them to tests that import them from here
from .support import free_port as free_port
from .support import http_get as http_get
from .support import wait_for as wait_for

ROOT = Path(__file__).resolve().parent.parent
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


def exporter_metrics() -> dict[str, MetricInfo]:
    """Every series name the exporter exposes, from the metric table (histograms expanded)."""
    known: dict[str, MetricInfo] = {}
    for spec in SPECS:
        labels = frozenset(spec.labels) | TARGET_LABELS
        values: dict[str, frozenset[str]] = {}
        statuses = _status_values(spec.name)
        if "status" in spec.labels and statuses is not None:
            values["status"] = statuses
        if spec.name == "iceprod_exporter_api_request_failures_total":
            values["reason"] = API_FAILURE_REASONS
        if spec.name == "iceprod_exporter_token_refresh_failures_total":
            values["reason"] = TOKEN_FAILURE_REASONS
        if spec.kind is Kind.HISTOGRAM:
            known[spec.name + "_bucket"] = MetricInfo(
                spec.name + "_bucket", "bucket", labels | {"le"}, values
            )
            for suffix in ("_sum", "_count"):
                known[spec.name + suffix] = MetricInfo(
                    spec.name + suffix, "counter", labels, values
                )
        else:
            kind = "counter" if spec.kind is Kind.COUNTER else "gauge"
            known[spec.name] = MetricInfo(spec.name, kind, labels, values)
    known["up"] = MetricInfo("up", "gauge", TARGET_LABELS)
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
    known = exporter_metrics()
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


# --------------------------------------------------------------------------- PromQL scanning

AGGREGATIONS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    }
)
FUNCTIONS = frozenset(
    {
        "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp",
        "clamp_max", "clamp_min", "count_over_time", "day_of_month", "day_of_week",
        "day_of_year", "days_in_month", "delta", "deriv", "exp", "floor", "histogram_avg",
        "histogram_count", "histogram_fraction", "histogram_quantile", "histogram_stddev",
        "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta", "increase",
        "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2",
        "mad_over_time", "max_over_time", "min_over_time", "minute", "month",
        "predict_linear", "present_over_time", "quantile_over_time", "rate", "resets",
        "round", "scalar", "sgn", "sort", "sort_desc", "sqrt", "stddev_over_time",
        "stdvar_over_time", "sum_over_time", "time", "timestamp", "vector", "year",
        "acos", "acosh", "asin", "asinh", "atan", "atanh", "cos", "cosh", "sin", "sinh",
        "tan", "tanh", "deg", "rad", "pi",
    }
)  # fmt: skip
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"})
#: functions whose (first) series argument must be a counter, and ones that must not get one
COUNTER_FUNCTIONS = frozenset({"rate", "irate", "increase", "resets"})
GAUGE_FUNCTIONS = frozenset({"deriv", "delta", "idelta", "predict_linear", "holt_winters"})

_TOKEN_RE = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<number>(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)(?:ms|[smhdwy])?
               (?:\d+(?:ms|[smhdwy]))*)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){}\[\],@:])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Matcher:
    """One label matcher of a selector."""

    label: str
    op: str
    value: str


@dataclass(frozen=True)
class Selector:
    """A metric selector: the name, its matchers and the function it is the argument of."""

    name: str
    matchers: tuple[Matcher, ...]
    function: str | None


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


def _tokens(expr: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        match = _TOKEN_RE.match(expr, pos)
        if match is None:
            raise ValueError(f"cannot read PromQL at {expr[pos : pos + 30]!r} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind not in ("space", "comment"):
            tokens.append((kind, match.group()))
        pos = match.end()
    return tokens


def _unquote(token: str) -> str:
    if token[0] == "`":
        return token[1:-1]
    return str(json.loads('"' + token[1:-1].replace('\\"', '"').replace('"', '\\"') + '"'))


def scan(expr: str) -> Scan:
    """List the selectors, grouping labels and functions of a PromQL expression.

    Not a full parser: enough structure to check names and labels against the metric table,
    and to fail on anything it cannot read (unknown functions, unbalanced brackets).
    """
    tokens = _tokens(expr)
    result = Scan()
    # stack of open "(" : the function name it belongs to (or None)
    parens: list[str | None] = []
    i = 0

    def function_context() -> str | None:
        return next((f for f in reversed(parens) if f is not None), None)

    def read_matchers(start: int) -> tuple[tuple[Matcher, ...], int]:
        matchers: list[Matcher] = []
        j = start + 1
        while tokens[j][1] != "}":
            (lkind, label), (_, op), (vkind, value) = tokens[j], tokens[j + 1], tokens[j + 2]
            if lkind not in ("ident", "string") or op not in ("=", "!=", "=~", "!~"):
                raise ValueError(f"bad label matcher near {label!r} in {expr!r}")
            if vkind != "string":
                raise ValueError(f"label {label!r}: value must be a string in {expr!r}")
            label = _unquote(label) if lkind == "string" else label
            matchers.append(Matcher(label, op, _unquote(value)))
            j += 3
            if tokens[j][1] == ",":
                j += 1
        return tuple(matchers), j + 1

    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "ident" and text in GROUPING:
            i += 1
            if following == "(":
                i += 1
                while tokens[i][1] != ")":
                    label_kind, label = tokens[i]
                    if label_kind != "ident":
                        raise ValueError(f"{text}(...) holds {label!r} in {expr!r}")
                    result.grouping_labels.add(label)
                    if text == "by":
                        result.by_labels.add(label)
                    i += 1
                    if tokens[i][1] == ",":
                        i += 1
                i += 1
            continue
        if kind == "ident" and text.lower() in KEYWORDS:
            i += 1
            continue
        if kind == "ident" and following == "(":
            if text in AGGREGATIONS:
                result.aggregations.add(text)
            elif text in FUNCTIONS:
                result.functions.add(text)
            else:
                raise ValueError(f"unknown function {text!r} in {expr!r}")
            parens.append(text)
            i += 2
            continue
        if kind == "ident" and text in AGGREGATIONS and following in ("by", "without"):
            # sum by (x) (...)
            result.aggregations.add(text)
            i += 1
            continue
        if kind == "ident" or (kind == "op" and text == "{"):
            name = text if kind == "ident" else ""
            j = i + 1 if kind == "ident" else i
            matchers: tuple[Matcher, ...] = ()
            if j < len(tokens) and tokens[j][1] == "{":
                matchers, j = read_matchers(j)
            if not name:
                names = [m.value for m in matchers if m.label == "__name__" and m.op == "="]
                if not names:
                    raise ValueError(f"selector without a metric name in {expr!r}")
                name = names[0]
            result.selectors.append(Selector(name, matchers, function_context()))
            i = j
            continue
        if kind == "op" and text == "(":
            parens.append(None)
        elif kind == "op" and text == ")":
            if not parens:
                raise ValueError(f"unbalanced ')' in {expr!r}")
            parens.pop()
        elif kind == "op" and text == "[":
            # range or subquery: durations only
            while tokens[i][1] != "]":
                i += 1
        i += 1
    if parens:
        raise ValueError(f"unbalanced '(' in {expr!r}")
    return result


def check_expression(expr: str, known: Mapping[str, MetricInfo]) -> list[str]:
    """Return the problems of one PromQL expression against the metric contract."""
    problems: list[str] = []
    try:
        scanned = scan(expr)
    except ValueError as exc:
        return [str(exc)]
    if not scanned.selectors and "vector(" not in expr and "time()" not in expr:
        problems.append(f"no metric in {expr!r}")
    used_labels: set[str] = set()
    for sel in scanned.selectors:
        info = known.get(sel.name)
        if info is None:
            problems.append(f"unknown metric {sel.name!r} in {expr!r}")
            continue
        used_labels |= info.labels
        for m in sel.matchers:
            if m.label == "__name__":
                continue
            if m.label not in info.labels:
                problems.append(f"{sel.name} has no label {m.label!r} (in {expr!r})")
                continue
            allowed = info.values.get(m.label)
            if allowed is None or m.op not in ("=", "=~"):
                continue
            wanted = [m.value] if m.op == "=" else m.value.split("|")
            for value in wanted:
                if re.fullmatch(r"[A-Za-z0-9_]+", value) and value not in allowed:
                    problems.append(
                        f"{sel.name}{{{m.label}=...}}: {value!r} is not one of {sorted(allowed)}"
                    )
        if sel.function in COUNTER_FUNCTIONS and info.kind not in ("counter", "bucket"):
            problems.append(f"{sel.function}() of {sel.name}, a {info.kind} (in {expr!r})")
        if sel.function in GAUGE_FUNCTIONS and info.kind != "gauge":
            problems.append(f"{sel.function}() of {sel.name}, a {info.kind} (in {expr!r})")
        if sel.function == "histogram_quantile" and info.kind != "bucket":
            problems.append(f"histogram_quantile() of {sel.name}, not a _bucket (in {expr!r})")
    unknown = scanned.grouping_labels - used_labels - TARGET_LABELS - REPLICA_LABELS
    if unknown:
        problems.append(f"grouping by {sorted(unknown)}, labels of no metric in {expr!r}")
    return problems


def replica_problems(expr: str) -> list[str]:
    """Raw IceProd series (:data:`REPLICATED`) not reduced to one copy per HA replica.

    Every selector of such a series must have, as its innermost enclosing aggregation, one of
    :data:`DEDUPLICATING` that does not keep a replica label: ``max without (instance, pod)``,
    ``max by (dataset)``, ``topk by (grid) (1, ...)``, ``max(...)``. Functions in between are fine
    (``max without (instance, pod) (deriv(x[1h]))``). A ``sum``/``count``/``avg`` first, or no
    aggregation at all, counts or shows every replica's copy. Only the prefix form of an
    aggregation (``sum by (x) (...)``) is understood, which is the form used throughout.
    """
    try:
        tokens = _tokens(expr)
    except ValueError as exc:
        return [str(exc)]
    problems: list[str] = []
    # one entry per open "(": (aggregation, "by"/"without"/None, its labels) or None
    stack: list[tuple[str, str | None, frozenset[str]] | None] = []
    pending: tuple[str, str | None, frozenset[str]] | None = None
    i = 0

    def labels_at(j: int) -> tuple[frozenset[str], int]:
        """The label list starting at the "(" at j, and the index after its ")"."""
        found = set()
        j += 1
        while tokens[j][1] != ")":
            if tokens[j][0] == "ident":
                found.add(tokens[j][1])
            j += 1
        return frozenset(found), j + 1

    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "ident" and text in AGGREGATIONS and following in ("(", "by", "without"):
            i += 1
            mode: str | None = None
            labels: frozenset[str] = frozenset()
            if tokens[i][1] in ("by", "without"):
                mode = tokens[i][1]
                labels, i = labels_at(i + 1)
            pending = (text, mode, labels)
            continue
        if kind == "ident" and text in GROUPING:
            i += 1
            if following == "(":
                _, i = labels_at(i)
            continue
        if kind == "ident" and (following == "(" or text.lower() in KEYWORDS):
            # a function's name (its "(" opens no aggregation), or and/or/unless/offset/bool
            i += 1
            continue
        if kind == "op" and text == "(":
            stack.append(pending)
            pending = None
        elif kind == "op" and text == ")":
            if stack:
                stack.pop()
        elif kind == "op" and text == "[":
            while tokens[i][1] != "]":
                i += 1
        elif kind == "op" and text == "{":
            while tokens[i][1] != "}":
                i += 1
        elif kind == "ident" and text in REPLICATED:
            enclosing = next((s for s in reversed(stack) if s is not None), None)
            if enclosing is None:
                problems.append(f"{text} is not reduced to one copy per replica in {expr!r}")
            else:
                name, mode, labels = enclosing
                kept = labels & REPLICA_LABELS if mode == "by" else REPLICA_LABELS - labels
                keeps_replicas = mode is not None and bool(kept)
                if name not in DEDUPLICATING or keeps_replicas:
                    problems.append(
                        f"{text} goes through {name} {mode or ''} ({', '.join(sorted(labels))}) "
                        f"before one copy per replica is kept, in {expr!r}"
                    )
        i += 1
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
