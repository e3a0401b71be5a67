"""The oracle the encoder is held to: the snapshot's families as prometheus_client objects.

Production never builds these (at 10,000 datasets they cost hundreds of megabytes); tests register
this collector in a private registry and compare prometheus_client's bytes with the encoder's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from iceprod_exporter.exposition.encoding import SnapshotEncoder, family
from iceprod_exporter.model.snapshot import Snapshot


class SnapshotCollector(Collector):
    """Yields every snapshot metric of the table from whatever snapshot is current."""

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
        self._clock = clock
        self.encoder = SnapshotEncoder(max_staleness=max_staleness, compat=compat)
        if registry is not None:
            registry.register(self)

    def describe(self) -> list[Metric]:
        """Describe without sampling, so registration does not read the snapshot."""
        return [family(spec) for spec in self.encoder.specs]

    def current(self) -> Snapshot:
        """The snapshot to expose now: stale dataset values past ``max_staleness`` removed."""
        return self._snapshot().visible(self._clock(), self.encoder.max_staleness)

    def collect(self) -> Iterator[Metric]:
        """Build fresh families from the current snapshot."""
        return self.families(self.current())

    def families(self, snapshot: Snapshot) -> Iterator[Metric]:
        """Families of one snapshot, in table order, as prometheus_client metric objects."""
        for spec, samples in self.encoder.samples(snapshot):
            metric = family(spec)
            for labels, value in samples:
                metric.add_metric(list(labels), value)
            yield metric
