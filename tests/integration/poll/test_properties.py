"""Random JSON of right and wrong shapes, fed through parse, poll, snapshot and exposition.

Whatever IceProd sends, the poll does not crash and the exposition parses: with
prometheus_client's text and OpenMetrics parsers, and with the real ``promtool check metrics``.
"""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from iceprod_exporter.exposition.telemetry import Telemetry
from iceprod_exporter.poll.poller import Poller
from iceprod_exporter.poll.schedule import Schedule
from tests.support.clock import FakeClock
from tests.support.collector_oracle import SnapshotCollector
from tests.support.exporter import openmetrics_families
from tests.support.monitoring import tool
from tests.support.strategies import ACTIVE, DATASET, source_of


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(DATASET, max_size=5), ACTIVE, st.booleans())
def test_any_answer_gives_a_poll_and_a_parseable_exposition(
    datasets: list[tuple[Any, ...]], active: Any, compat: bool
) -> None:
    source, clock = source_of(datasets, active), FakeClock()
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
