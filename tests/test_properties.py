"""Random JSON of right and wrong shapes, fed through parse, poll, snapshot and exposition.

Whatever IceProd sends, the poll does not crash and the exposition parses: with
prometheus_client's text and OpenMetrics parsers, and with the real ``promtool check metrics``.
"""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from iceprod_exporter.exposition.telemetry import Telemetry
from iceprod_exporter.poll.poller import Poller
from iceprod_exporter.poll.schedule import Schedule
from tests.collector_oracle import SnapshotCollector

from .monitoring_support import tool
from .support import openmetrics_families
from .test_poller import Clock, FakeSource

pytestmark = pytest.mark.integration  # promtool, and a few seconds of examples

# every code point, lone surrogates included (valid in JSON, not encodable as UTF-8)
TEXT = st.text(st.characters(blacklist_categories=()), max_size=8)
NUMBER = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=300, max_value=400).map(lambda e: 10**e),  # beyond a float
    st.floats(allow_nan=True, allow_infinity=True),
)
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBER, TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=8,
)
STATUS = st.one_of(st.sampled_from(["processing", "suspended", "errors", "complete"]), TEXT)


def _maybe(right: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the right shape, sometimes anything."""
    return st.one_of(right, right, right, JSON)


ROW = st.fixed_dictionaries(
    {
        "dataset": _maybe(st.integers(min_value=0, max_value=30)),  # small: numbers collide
        "status": _maybe(STATUS),
    },
    optional={
        "description": _maybe(TEXT),
        "group": _maybe(TEXT),
        "username": _maybe(TEXT),
        "priority": _maybe(NUMBER),
        "jobs_submitted": _maybe(NUMBER),
        "tasks_submitted": _maybe(NUMBER),
        "start_date": _maybe(st.one_of(TEXT, st.just("2026-11-26T10:00:00"))),
        "truncated": _maybe(st.booleans()),
    },
)
COUNTS = st.dictionaries(STATUS, _maybe(NUMBER), max_size=4)
STATS_ROW = st.fixed_dictionaries(
    {
        key: _maybe(NUMBER)
        for key in ("count", "gpu", "total_hrs", "total_err_hrs", "avg_hrs", "min_hrs", "max_hrs")
    },
    optional={"stddev_hrs": _maybe(NUMBER), "efficiency": _maybe(NUMBER)},
)
DATASET = st.tuples(
    TEXT,
    ROW,
    _maybe(COUNTS),
    _maybe(st.dictionaries(TEXT, _maybe(COUNTS), max_size=3)),
    _maybe(st.dictionaries(TEXT, _maybe(STATS_ROW), max_size=2)),
)
#: the IceProd-wide active tasks, CPU then GPU
ACTIVE = st.tuples(_maybe(COUNTS), _maybe(COUNTS))


def _source(datasets: list[tuple[Any, ...]], active: Any) -> FakeSource:
    source = FakeSource()
    for gpu, body in zip(("false", "true"), active, strict=True):
        source.answers[f"/task_counts/status?gpu={gpu}"] = body
    for dataset_id, row, jobs, tasks, stats in datasets:
        source.datasets[dataset_id] = row
        source.answers[f"/datasets/{dataset_id}/job_counts/status"] = jobs
        source.answers[f"/datasets/{dataset_id}/task_counts/name_status"] = tasks
        source.answers[f"/datasets/{dataset_id}/task_stats"] = stats
    return source


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(DATASET, max_size=5), ACTIVE, st.booleans())
def test_any_answer_gives_a_poll_and_a_parseable_exposition(
    datasets: list[tuple[Any, ...]], active: Any, compat: bool
) -> None:
    source, clock = _source(datasets, active), Clock()
    poller = Poller(source, Schedule(poll_interval=60.0), Telemetry(CollectorRegistry()), clock)
    asyncio.run(poller.poll(full=True))
    assert poller.consecutive_crashes == 0, "no answer may crash a poll"
    registry = CollectorRegistry()
    SnapshotCollector(
        lambda: poller.snapshot, max_staleness=600, compat=compat, clock=clock, registry=registry
    )
    text = generate_latest(registry).decode()
    openmetrics = generate_openmetrics(registry).decode()  # type: ignore[no-untyped-call]
    list(parse_text(text))
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for family in openmetrics_families(openmetrics):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in seen, f"duplicate series {key}"
            seen.add(key)
    checked = subprocess.run(
        [str(tool("promtool")), "check", "metrics"],
        input=text.encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    # promtool exits 1 for lint advice only on its own stdout; parse errors go to stderr
    assert b"error" not in checked.stderr.lower(), checked.stderr.decode()
