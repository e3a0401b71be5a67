"""The sharded deployment as real processes, and the three properties it must have.

One simulated IceProd (its own process, the world frozen so that every value holds still),
``shards`` x ``replicas`` processes of ``iceprod-exporter run --shard i --total-shards N``, one
unsharded exporter beside them as the reference, and a real Prometheus (Debian's package, on
127.0.0.1) scraping the sharded ones as the job ``iceprod-exporter`` with every replica label of
the monitoring mixin (``grafana/mixin/config.py``) but ``instance`` set to the replica's pod name.
It loads the shipped recording rules and alerts, rendered from the current files at start; only
``IceProdExporterDown``'s ``for:`` is shortened, to one evaluation interval.

The checks (each returns a :class:`Finding`; ``make scale-out`` prints them, the test asserts):

* :func:`check_union`: the union of the shards' per-dataset series equals the unsharded
  exporter's, values included (except the read timestamps, which differ by design), no dataset
  comes from two shards, each dataset sits in the shard its id hashes to, both replicas of a
  shard export the same series, and the recording rules' IceProd-wide totals equal the
  reference's sums.
* :func:`check_replica_kill`: SIGKILL to one replica of shard 0 (the shard that also exports the
  IceProd-wide series) changes none of the recording rules' IceProd-wide series; the replica is
  then started again.
* :func:`check_shard_kill`: SIGKILL to both replicas of the last shard makes exactly its datasets
  stale (the totals drop by its share, nothing else goes) and fires ``IceProdExporterDown`` for
  its two targets and no other.

Used by ``benchmarks/scale_out.py`` (10,000 datasets) and ``tests/integration/test_scale_out.py``
(1,000).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from grafana.mixin.config import DEFAULT as MIXIN
from iceprod_exporter.poll.schedule import shard_of
from tests.support.exporter import free_port, http_get, wait_for
from tests.support.monitoring import (
    EXPORTER_JOB,
    PER_INSTANCE,
    RULE_FILES,
    Server,
    assert_loopback_only,
    prom_query,
    start_prometheus,
)

EXPORTER_DOWN = "IceProdExporterDown"
#: per-dataset series whose values differ between processes by design: when each one read it
UNSTABLE = frozenset({"iceprod_dataset_counted_timestamp_seconds"})
#: the recording rules' IceProd-wide series (`iceprod:*`), which the dashboards' totals read
TOTALS = '{__name__=~"iceprod:.+"}'

#: a series of an exposition: (name, sorted label pairs)
SeriesKey = tuple[str, tuple[tuple[str, str], ...]]
Series = dict[SeriesKey, float]

_LINE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Plan:
    """How big the run is and how fast its clocks go."""

    datasets: int
    shards: int = 3
    replicas: tuple[str, ...] = ("a", "b")
    #: seconds between the exporters' poll cycles
    poll_interval: float = 5.0
    #: Prometheus's scrape and rule evaluation interval, seconds
    scrape_interval: float = 1.0
    #: seconds every exporter gets for its first complete poll
    ready_timeout: float = 120.0
    #: seconds Prometheus gets to see a change (a scrape, an evaluation, an alert)
    settle_timeout: float = 60.0


@dataclass
class Exporter:
    """One ``iceprod-exporter run`` process: a replica of a shard, or the unsharded reference."""

    shard: int | None
    replica: str
    log: Path
    #: the port it bound (first asked for any free one), once its log says
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    #: seconds from start to /readyz answering 200 (the first complete poll), once known
    ready_after: float | None = None

    @property
    def name(self) -> str:
        """The pod name Prometheus labels the target with (``unsharded`` for the reference)."""
        return (
            "unsharded" if self.shard is None else f"iceprod-exporter-{self.shard}-{self.replica}"
        )

    @property
    def target(self) -> str:
        """host:port, also its ``instance`` label."""
        return f"127.0.0.1:{self.port}"

    def start(self, api_url: str, plan: Plan) -> None:
        """Start it; its own session, so that a kill takes its serving process too."""
        sharding = (
            [] if self.shard is None else [f"--shard={self.shard}", f"--total-shards={plan.shards}"]
        )
        argv = [
            sys.executable, "-m", "iceprod_exporter", "run",
            f"--api-url={api_url}", "--token=scale-out",
            # first port 0: it binds a free port itself, so no port can be taken between choosing
            # it and binding it (seven exporters' outbound connections take ephemeral ports);
            # started again, it takes the port Prometheus knows, as a restarted pod would
            "--listen-address=127.0.0.1", f"--port={self.port}", "--log-format=json",
            f"--poll-interval={plan.poll_interval:g}",
            # the world is frozen: one unchanged read makes a dataset quiet, and quiet ones are
            # not read again within the run, so the cycles after the first cost little
            "--quiet-after-polls=1", "--quiet-poll-interval=86400",
            "--rate-limit=0",
            *sharding,
        ]  # fmt: skip
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        self.started, self.ready_after = time.monotonic(), None

    def bound_port(self) -> int:
        """The port its ``exporter.started`` log line names, or 0 before it has started."""
        for line in self.log.read_text(errors="replace").splitlines():
            if '"exporter.started"' in line:
                return int(json.loads(line)["url"].rstrip("/").rsplit(":", 1)[1])
        return 0

    def ready(self) -> bool:
        """Whether /readyz answers 200; fails when the process has exited."""
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise AssertionError(f"{self.name} exited ({code})\n{self.log_tail()}")
        self.port = self.port or self.bound_port()
        if not self.port:
            return False
        if http_get(f"http://{self.target}/readyz", timeout=2)[0] != 200:
            return False
        if self.ready_after is None:
            self.ready_after = time.monotonic() - self.started
            assert_loopback_only(self.proc, self.name)
        return True

    def kill(self) -> None:
        """SIGKILL to the poller and its serving process, as a crash or an evicted pod."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM (the exporter stops its serving process itself); SIGKILL after 20 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()

    def first_poll(self) -> dict[str, Any]:
        """The log's ``poll.finished`` event of cycle 1 (of the latest start)."""
        events: list[dict[str, Any]] = [
            json.loads(line)
            for line in self.log.read_text().splitlines()
            if '"poll.finished"' in line
        ]
        firsts = [e for e in events if e.get("cycle") == 1]
        if not firsts:
            raise AssertionError(f"{self.name}: no first poll in its log\n{self.log_tail()}")
        return firsts[-1]

    def log_tail(self) -> str:
        """The end of its log, for failure messages."""
        with contextlib.suppress(OSError):
            return f"--- {self.name} ({self.log}) ---\n{self.log.read_text()[-3000:]}"
        return f"--- {self.name}: no log ---"

    def series(self) -> Series:
        """The IceProd series of its /metrics now (not the exporter's own, not per instance)."""
        status, body = http_get(f"http://{self.target}/metrics", timeout=60)
        if status != 200:
            raise AssertionError(f"{self.name}: /metrics answered {status}")
        return iceprod_series(body.decode())


def iceprod_series(text: str) -> Series:
    """The series of a text exposition that describe IceProd (``iceprod_*``, per dataset or not).

    The exporter's own metrics (``iceprod_exporter_*``), ``iceprod_up`` and the process metrics
    describe the process and differ between replicas by design.
    """
    found: Series = {}
    for line in text.splitlines():
        if not line.startswith("iceprod_") or line.startswith("iceprod_exporter_"):
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            raise AssertionError(f"unparsable exposition line {line[:200]!r}")
        name, labels, value = match.groups()
        if name in PER_INSTANCE:
            continue
        pairs = tuple(sorted(_LABEL.findall(labels or "")))
        found[(name, pairs)] = float(value)
    return found


def dataset_of(key: SeriesKey) -> str | None:
    """The ``dataset`` label of a series, None for IceProd-wide ones."""
    return next((value for label, value in key[1] if label == "dataset"), None)


def differing(left: Series, right: Series) -> list[SeriesKey]:
    """Series of both whose values differ, leaving out :data:`UNSTABLE` ones."""
    return [
        key
        for key in left.keys() & right.keys()
        if key[0] not in UNSTABLE and not _same(left[key], right[key])
    ]


def changed(before: Mapping[SeriesKey, float], after: Mapping[SeriesKey, float]) -> list[str]:
    """The series that came, went or changed value between two instant queries."""
    return [
        f"{key[0]}{dict(key[1])}: {before.get(key)} -> {after.get(key)}"
        for key in sorted(before.keys() | after.keys())
        if key not in before or key not in after or not _same(before[key], after[key])
    ]


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)


def totals_by_status(series: Series, name: str) -> dict[str, float]:
    """The sum of a per-dataset metric by status, as the recording rules compute it."""
    sums: dict[str, float] = {}
    for (metric, labels), value in series.items():
        if metric == name:
            status = dict(labels)["status"]
            sums[status] = sums.get(status, 0.0) + value
    return sums


@dataclass
class Finding:
    """What one check found: whether it holds, and the figures and reasons behind it."""

    check: str
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems

    def report(self) -> str:
        """For people: the verdict, the figures, the problems."""
        verdict = "holds" if self.ok else "FAILS"
        body = [f"  {line}" for line in self.lines] + [f"  PROBLEM: {p}" for p in self.problems]
        return "\n".join([f"{self.check}: {verdict}", *body])


@dataclass
class Deployment:
    """The running processes of one scale-out run."""

    plan: Plan
    workdir: Path
    api_url: str
    simulator: subprocess.Popen[bytes]
    replicas: list[Exporter]
    reference: Exporter
    prometheus: Server
    #: the IceProd-wide recording rules (``iceprod:*``) of the rule files Prometheus loaded
    recorded: frozenset[str]
    #: the reference's and each replica's series when the union was checked
    snapshot: dict[str, Series] = field(default_factory=dict)

    def shard(self, number: int) -> list[Exporter]:
        """The replicas of one shard."""
        return [e for e in self.replicas if e.shard == number]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query against the run's Prometheus."""
        return prom_query(self.prometheus.url, expr)

    def vector(self, expr: str) -> dict[SeriesKey, float]:
        """An instant query's result by (name, sorted labels)."""
        found = {}
        for result in self.query(expr):
            labels = dict(result["metric"])
            name = labels.pop("__name__", "")
            found[(name, tuple(sorted(labels.items())))] = float(result["value"][1])
        return found

    def count(self, selector: str) -> int:
        """How many series a selector finds now."""
        result = self.query(f"count({selector})")
        return int(float(result[0]["value"][1])) if result else 0

    def instances(self, expr: str) -> set[str]:
        """The ``instance`` labels of an instant query's result."""
        return {r["metric"].get("instance", "") for r in self.query(expr)}

    def wait(self, condition: Callable[[], Any], what: str) -> Any:
        """Wait up to the plan's settle timeout, with scrape errors and logs on failure."""
        return wait_for(condition, self.plan.settle_timeout, what, 0.5, self.diagnose)

    def totals_settled(self) -> bool:
        """Whether every IceProd-wide rule has recorded, and nothing changed over two evaluations.

        The ``deriv1h`` rules record nothing until their inputs have two samples, and at 10,000
        datasets an evaluation of the per-dataset group can outlast the interval (Prometheus
        then skips one), so the first results take a while.
        """
        before = self.vector(TOTALS)
        self.evaluations()
        after = self.vector(TOTALS)
        return {name for name, _ in after} >= self.recorded and not changed(before, after)

    def evaluations(self, count: int = 2) -> None:
        """Let Prometheus scrape and evaluate its rules ``count`` more times."""
        time.sleep(count * self.plan.scrape_interval + 0.5)

    def diagnose(self) -> str:
        """Scrape errors and log tails, for failure messages."""
        status, body = http_get(self.prometheus.url + "/api/v1/targets")
        scrapes = [
            f"{t['scrapeUrl']}: {t['health']} {t['lastError']!r}"
            for t in (json.loads(body)["data"]["activeTargets"] if status == 200 else [])
        ]
        tails = [e.log_tail() for e in self.replicas] + [self.prometheus.log_tail(3000)]
        return "\n".join(scrapes + tails)


def _prometheus_rules(workdir: Path, evaluation: str) -> list[Path]:
    """The shipped rule files as they are now, ``IceProdExporterDown`` waiting one evaluation."""
    copies, found = [], False
    for path in RULE_FILES:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        for group in document["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") == EXPORTER_DOWN:
                    rule["for"], found = evaluation, True
        copy = workdir / path.name
        copy.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        copies.append(copy)
    if not found:
        raise AssertionError(f"no alert {EXPORTER_DOWN} in {[str(p) for p in RULE_FILES]}")
    return copies


def _prometheus_config(workdir: Path, plan: Plan, replicas: list[Exporter]) -> Path:
    interval = f"{plan.scrape_interval:g}s"
    # instance is the target's address; the other replica labels carry the pod name, as the
    # Prometheus Operator labels the pods of a StatefulSet
    pod_labels = [label for label in MIXIN.replica_labels if label != "instance"]
    config = {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        },
        "rule_files": [str(p) for p in _prometheus_rules(workdir, interval)],
        "scrape_configs": [
            {
                "job_name": EXPORTER_JOB,
                "static_configs": [
                    {"targets": [e.target], "labels": dict.fromkeys(pod_labels, e.name)}
                    for e in replicas
                ],
            }
        ],
    }
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _start_simulator(plan: Plan, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    argv = [sys.executable, "-m", "iceprod_simulator", f"--datasets={plan.datasets}",
            f"--port={port}", "--tick=0"]  # fmt: skip
    log = workdir / "simulator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"simulator exited ({proc.returncode}): {log.read_text()[-2000:]}")
        return http_get(url + "/healthz", timeout=2)[0] == 200

    try:
        # building 10,000 datasets takes about 10 s of CPU
        wait_for(healthy, 60 + plan.datasets / 50, "the simulated IceProd", 0.25)
        assert_loopback_only(proc, "the simulated IceProd")
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
    return proc, url


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@contextlib.contextmanager
def deploy(plan: Plan, workdir: Path) -> Iterator[Deployment]:
    """Start everything; return once every exporter has polled once and Prometheus has them all."""
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as cleanup:
        simulator, api_url = _start_simulator(plan, workdir)
        cleanup.callback(_stop, simulator)
        replicas = [
            Exporter(shard, replica, workdir / f"exporter-{shard}-{replica}.log")
            for shard in range(plan.shards)
            for replica in plan.replicas
        ]
        reference = Exporter(None, "", workdir / "exporter-unsharded.log")
        for exporter in [reference, *replicas]:
            cleanup.callback(exporter.stop)
            exporter.start(api_url, plan)

        def all_ready() -> bool:
            # a list, not a generator: each one notes the moment it got ready
            return all([e.ready() for e in [reference, *replicas]])

        wait_for(
            all_ready,
            plan.ready_timeout,
            "every exporter's first complete poll",
            0.5,
            lambda: "\n".join(e.log_tail() for e in [reference, *replicas]),
        )
        prometheus = start_prometheus(_prometheus_config(workdir, plan, replicas), workdir)
        cleanup.callback(prometheus.stop)
        recorded = frozenset(
            rule["record"]
            for path in RULE_FILES  # the copies Prometheus loaded
            for group in yaml.safe_load((workdir / path.name).read_text())["groups"]
            for rule in group["rules"]
            if rule.get("record", "").startswith("iceprod:")
        )
        deployment = Deployment(
            plan, workdir, api_url, simulator, replicas, reference, prometheus, recorded
        )
        count = len(replicas)
        deployment.wait(
            lambda: (
                len(deployment.query(f'up{{job="{EXPORTER_JOB}"}} == 1')) == count
                and len(deployment.instances("count by (instance) (iceprod_dataset_info)")) == count
            ),
            "Prometheus to scrape every replica's datasets",
        )
        deployment.wait(
            deployment.totals_settled, f"every one of {sorted(recorded)} recorded and settled"
        )
        yield deployment


def check_union(dep: Deployment) -> Finding:
    """The shards together export what one unsharded exporter does, each dataset once."""
    finding = Finding("union of the shards = one unsharded exporter, no dataset twice")
    reference = dep.reference.series()
    got = {e.name: e.series() for e in dep.replicas}
    dep.snapshot = {dep.reference.name: reference, **got}
    union: Series = {}
    owners: dict[str, set[int]] = {}
    for shard in range(dep.plan.shards):
        first, *others = dep.shard(shard)
        for other in others:
            a, b = got[first.name], got[other.name]
            if a.keys() != b.keys() or differing(a, b):
                finding.problems.append(f"{first.name} and {other.name} export different series")
        shard_series = got[first.name]
        datasets = {d for key in shard_series if (d := dataset_of(key)) is not None}
        wide = sum(1 for key in shard_series if dataset_of(key) is None)
        finding.lines.append(
            f"shard {shard}: {len(datasets):,} datasets, {len(shard_series):,} series "
            f"({wide:,} IceProd-wide)"
        )
        for dataset in datasets:
            owners.setdefault(dataset, set()).add(shard)
        if shard != 0 and wide:
            finding.problems.append(f"shard {shard} exports {wide} IceProd-wide series")
        union.update(shard_series)
    twice = sorted(d for d, shards in owners.items() if len(shards) > 1)
    if twice:
        finding.problems.append(f"{len(twice)} datasets from two shards, e.g. {twice[:5]}")
    misplaced = [
        dict(labels)["dataset"]
        for (name, labels) in union
        if name == "iceprod_dataset_info"
        and shard_of(dict(labels)["dataset_id"], dep.plan.shards)
        not in owners[dict(labels)["dataset"]]
    ]
    if misplaced:
        finding.problems.append(f"{len(misplaced)} datasets not in their hash's shard")
    missing, extra = reference.keys() - union.keys(), union.keys() - reference.keys()
    unequal = differing(reference, union)
    dep.reference.stop()  # compared: its polls would only slow the others down
    finding.lines.append(
        f"union: {len(union):,} series of {len(owners):,} datasets; unsharded: "
        f"{len(reference):,} series; missing {len(missing)}, extra {len(extra)}, "
        f"values differing {len(unequal)} (read timestamps {sorted(UNSTABLE)} not compared)"
    )
    for what, keys in (("missing from the union", missing), ("only in the union", extra),
                       ("with other values", unequal)):  # fmt: skip
        if keys:
            finding.problems.append(f"{len(keys)} series {what}, e.g. {sorted(keys)[:3]}")
    # the dashboards' totals, recorded by the shipped rules from the six targets
    for metric in ("iceprod_dataset_jobs", "iceprod_dataset_tasks"):
        rule = f"iceprod:{metric.removeprefix('iceprod_')}:sum_by_status"
        want = totals_by_status(reference, metric)
        recorded = {dict(k[1])["status"]: v for k, v in dep.vector(rule).items()}
        finding.lines.append(f"{rule} = unsharded sums: {recorded == want} ({_brief(recorded)})")
        if recorded != want:
            finding.problems.append(f"{rule} is {recorded}, the unsharded exporter sums {want}")
    return finding


def check_replica_kill(dep: Deployment, shard: int = 0) -> Finding:
    """SIGKILL to one replica of a shard changes no IceProd-wide total; it is started again."""
    victim = dep.shard(shard)[-1]
    finding = Finding(f"killing one replica ({victim.name}) changes no dashboard total")
    before = dep.vector(TOTALS)
    wide_before = dep.vector("max without (instance, pod) (iceprod_datasets)")
    victim.kill()
    killed = time.monotonic()
    dep.wait(
        lambda: (
            dep.instances(f'up{{instance="{victim.target}"}} == 0')
            and not dep.query(f'iceprod_dataset_info{{instance="{victim.target}"}}')
        ),
        f"Prometheus to see {victim.name} down and its series stale",
    )
    finding.lines.append(f"its series stale in Prometheus {time.monotonic() - killed:.1f} s after")
    dep.evaluations()
    after = dep.vector(TOTALS)
    wide_after = dep.vector("max without (instance, pod) (iceprod_datasets)")
    moved = changed(before, after)
    finding.lines.append(
        f"{len(before)} recorded IceProd-wide series (iceprod:*) before and after: "
        f"{len(moved)} changed; iceprod_datasets by status unchanged: {wide_before == wide_after}"
    )
    if not before:
        finding.problems.append("no iceprod:* series recorded before the kill")
    if moved:
        finding.problems.append(f"changed: {moved[:5]}")
    if wide_before != wide_after or not wide_before:
        finding.problems.append(f"iceprod_datasets {wide_before} became {wide_after}")
    victim.start(dep.api_url, dep.plan)
    wait_for(
        victim.ready, dep.plan.ready_timeout, f"{victim.name} to poll again", 0.5, victim.log_tail
    )
    dep.wait(
        lambda: (
            dep.instances(f'iceprod_dataset_info{{instance="{victim.target}"}}')
            and not dep.query(f'ALERTS{{alertname="{EXPORTER_DOWN}"}}')
        ),
        f"{victim.name} back in Prometheus and {EXPORTER_DOWN} resolved",
    )
    finding.lines.append(f"{victim.name} started again: ready after {victim.ready_after:.1f} s")
    return finding


def check_shard_kill(dep: Deployment) -> Finding:
    """SIGKILL to a whole shard: its datasets alone go stale, its targets alone are down."""
    shard = dep.plan.shards - 1
    victims = dep.shard(shard)
    finding = Finding(f"killing shard {shard} ({len(victims)} replicas): only its datasets stale")
    snapshot = dep.snapshot
    datasets = {
        e.shard: {d for key in snapshot[e.name] if (d := dataset_of(key)) is not None}
        for e in dep.replicas
    }
    survivors = set().union(*(datasets[s] for s in range(dep.plan.shards) if s != shard))
    # every copy, by metric: the live shards' replicas are all up again
    surviving = Counter(
        key[0]
        for e in dep.replicas
        if e.shard != shard
        for key in snapshot[e.name]
        if dataset_of(key)
    )
    for victim in victims:
        victim.kill()
    killed = time.monotonic()
    targets = {v.target for v in victims}
    firing_query = f'ALERTS{{alertname="{EXPORTER_DOWN}",alertstate="firing"}}'
    dep.wait(
        lambda: dep.instances(firing_query) >= targets, f"{EXPORTER_DOWN} to fire for {targets}"
    )
    fired_after = time.monotonic() - killed
    dep.evaluations()
    alerted = dep.instances(f'ALERTS{{alertname="{EXPORTER_DOWN}"}}')
    shown = {r["metric"]["dataset"] for r in dep.query("group by (dataset) (iceprod_dataset_info)")}
    # one metric a query: all of them at once takes longer than a query may at 10,000 datasets
    held = {name: dep.count(f'{name}{{job="{EXPORTER_JOB}"}}') for name in sorted(surviving)}
    finding.lines.append(
        f"{EXPORTER_DOWN} fires for {sorted(alerted)} (shard {shard}: {sorted(targets)}), "
        f"{fired_after:.1f} s after the kill (its for: shortened to one evaluation)"
    )
    finding.lines.append(
        f"datasets in Prometheus: {len(shown):,} (shards left: {len(survivors):,}, shard "
        f"{shard}'s {len(datasets[shard]):,} gone: {not (shown & datasets[shard])}); "
        f"per-dataset series, every copy: {sum(held.values()):,} in Prometheus, "
        f"{sum(surviving.values()):,} exported by the live replicas"
    )
    if alerted != targets:
        finding.problems.append(
            f"{EXPORTER_DOWN} fires for {sorted(alerted)}, not {sorted(targets)}"
        )
    if shown != survivors:
        finding.problems.append(
            f"{len(shown - survivors)} datasets of the dead shard still shown, "
            f"{len(survivors - shown)} of the live shards gone"
        )
    for name, count in held.items():
        if count != surviving[name]:
            finding.problems.append(f"{count} series of {name}, not {surviving[name]}")
    # the totals drop by the dead shard's share, and only by it
    dead = snapshot[victims[0].name]
    want = {
        status: total - totals_by_status(dead, "iceprod_dataset_jobs").get(status, 0.0)
        for status, total in totals_by_status(
            snapshot[dep.reference.name], "iceprod_dataset_jobs"
        ).items()
    }
    recorded = {
        dict(k[1])["status"]: v for k, v in dep.vector("iceprod:dataset_jobs:sum_by_status").items()
    }
    finding.lines.append(f"iceprod:dataset_jobs:sum_by_status = unsharded minus shard {shard}: "
                         f"{recorded == want} ({_brief(recorded)})")  # fmt: skip
    if recorded != want:
        finding.problems.append(f"jobs by status {recorded}, expected {want}")
    return finding


def _brief(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:,.0f}" for k, v in sorted(values.items()))
