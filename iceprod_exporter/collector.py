"""Turns the current snapshot into metric families, and renders them once per snapshot."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .metrics import SPECS, Group, Kind, MetricSpec
from .snapshot import Snapshot

Encoder = Callable[[Collector], bytes]


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

    def current(self) -> Snapshot:
        """The snapshot to expose now: stale dataset values past ``max_staleness`` removed."""
        return self._snapshot().visible(self._clock(), self._max_staleness)

    def collect(self) -> Iterator[Metric]:
        """Build fresh families from the current snapshot."""
        return self.families(self.current())

    def families(self, snapshot: Snapshot) -> Iterator[Metric]:
        """Families of one snapshot, in table order."""
        for spec in self._specs:
            assert spec.sampler is not None
            family = _family(spec)
            for labels, value in spec.sampler(snapshot):
                family.add_metric(list(labels), value)
            yield family


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


class RenderedSnapshot:
    """Exposition text of the current snapshot, rendered once per snapshot and format.

    With a thousand datasets rendering takes a large fraction of a second; snapshots change
    once per poll, scrapes come far more often (several Prometheus replicas, dashboards).
    """

    def __init__(self, collector: SnapshotCollector) -> None:
        self._collector = collector
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[Snapshot, bytes]] = {}

    def render(self, encoder: Encoder, content_type: str) -> bytes:
        """Rendered text of the current snapshot in ``encoder``'s format (cached by type)."""
        snapshot = self._collector.current()
        with self._lock:
            cached = self._cache.get(content_type)
            if cached is not None and cached[0] is snapshot:
                return cached[1]
            # under the lock: concurrent first scrapes render once, the others wait for it
            text = encoder(_Families(self._collector.families(snapshot)))
            self._cache[content_type] = (snapshot, text)
            return text


def _family(spec: MetricSpec) -> GaugeMetricFamily:
    assert spec.kind is Kind.GAUGE, f"{spec.name}: snapshot metrics are gauges"
    return GaugeMetricFamily(spec.name, spec.help, labels=list(spec.labels))
