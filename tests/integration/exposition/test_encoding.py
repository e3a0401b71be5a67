"""The encoder against its oracle: any snapshot, any label text, prometheus_client's bytes."""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from iceprod_exporter.exposition.encoding import FamilyEncoder, SnapshotEncoder
from iceprod_exporter.exposition.formats import Format, encode
from iceprod_exporter.exposition.metrics import SPECS
from iceprod_exporter.exposition.telemetry import Telemetry
from iceprod_exporter.poll.poller import Poller
from iceprod_exporter.poll.schedule import Schedule
from iceprod_exporter.serving.local import LocalStore
from tests.support.clock import FakeClock
from tests.support.collector_oracle import SnapshotCollector
from tests.support.strategies import ACTIVE, DATASET, source_of

#: label text heavy in what the formats escape, plus anything UTF-8 can carry
LABEL = st.one_of(
    st.text(st.sampled_from('a"\\\n\u00e9{}=, #'), max_size=6),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=6),
)


VALUE = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**60), 2**60))


class _Fixed:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(DATASET, max_size=5), ACTIVE, st.booleans())
def test_the_encoder_writes_what_prometheus_client_writes(
    datasets: list[tuple[Any, ...]], active: Any, compat: bool
) -> None:
    """Any answer, any label text: the served bytes equal prometheus_client's, in both views."""
    source, clock = source_of(datasets, active), FakeClock(0.0)
    poller = Poller(source, Schedule(poll_interval=60.0), Telemetry(CollectorRegistry()), clock)
    asyncio.run(poller.poll(full=True))
    registry = CollectorRegistry()
    # the oracle registers itself in ``registry``, which prometheus_client then encodes
    SnapshotCollector(
        lambda: poller.snapshot, max_staleness=600, compat=compat, clock=clock, registry=registry
    )
    store = LocalStore(
        lambda: poller.snapshot, SnapshotEncoder(max_staleness=600, compat=compat), clock
    )
    polled = clock.now
    for clock.now in (polled, polled + 601):  # the full view, then the stale one
        for fmt in Format:
            ours = store.current().body(fmt, gzipped=False)
            assert ours == encode(registry, fmt)
            assert gzip.decompress(store.current().body(fmt, gzipped=True)) == ours


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_family_is_written_as_prometheus_client_writes_it(data: st.DataObject) -> None:
    spec = data.draw(st.sampled_from([s for s in SPECS if s.sampler is not None]))
    samples = data.draw(
        st.lists(st.tuples(st.tuples(*[LABEL] * len(spec.labels)), VALUE), max_size=4)
    )
    family = GaugeMetricFamily(spec.name, spec.help, labels=list(spec.labels))
    for labels, value in samples:
        family.add_metric(list(labels), value)
    registry = CollectorRegistry()
    registry.register(_Fixed([family]))
    parts = list(FamilyEncoder(spec).parts(samples))
    for fmt in Format:
        ours = b"".join(data for formats, data in parts if fmt in formats)
        assert ours == encode(registry, fmt).removesuffix(b"# EOF\n")
