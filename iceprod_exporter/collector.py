"""Turns the current snapshot into metric families, fresh on every scrape."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .metrics import SPECS, Group, Kind, MetricSpec
from .snapshot import Snapshot


class SnapshotCollector(Collector):
    """Yields every snapshot-derived metric of the table from whatever snapshot is current.

    Reading the snapshot is one reference load: a scrape never waits on the poller or the
    network, and concurrent scrapes never see a half-built state.
    """

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        *,
        max_staleness: float,
        compat: bool = False,
        clock: Callable[[], float] = time.time,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._max_staleness = max_staleness
        self._clock = clock
        groups = {Group.ICEPROD, Group.COMPAT} if compat else {Group.ICEPROD}
        self._specs = [s for s in SPECS if s.group in groups and s.sampler is not None]
        if registry is not None:
            registry.register(self)

    def describe(self) -> list[Metric]:
        """Describe without sampling, so registration does not read the snapshot."""
        return [_family(spec) for spec in self._specs]

    def collect(self) -> Iterator[Metric]:
        """Build fresh families from the current snapshot (stale dataset values dropped)."""
        snapshot = self._snapshot().visible(self._clock(), self._max_staleness)
        for spec in self._specs:
            assert spec.sampler is not None
            family = _family(spec)
            for labels, value in spec.sampler(snapshot):
                family.add_metric(list(labels), value)
            yield family


def _family(spec: MetricSpec) -> GaugeMetricFamily:
    assert spec.kind is Kind.GAUGE, f"{spec.name}: snapshot metrics are gauges"
    return GaugeMetricFamily(spec.name, spec.help, labels=list(spec.labels))
