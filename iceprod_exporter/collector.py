"""Turns the current snapshot into metric families, and encodes them once per snapshot."""

from __future__ import annotations

import gzip
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics
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

    def current(self) -> Snapshot:
        """The snapshot to expose now: stale dataset values past ``max_staleness`` removed."""
        return self._snapshot().visible(self._clock(), self._max_staleness)

    def raw(self) -> Snapshot:
        """The current snapshot as the poller holds it (before the staleness rule)."""
        return self._snapshot()

    def now(self) -> float:
        """The time the staleness rule is applied at."""
        return self._clock()

    def stale_after(self, snapshot: Snapshot) -> float:
        """When ``snapshot``'s dataset values turn stale (at once if no poll succeeded)."""
        if snapshot.last_success is None:
            return -math.inf
        return snapshot.last_success + self._max_staleness

    def stale_view(self, snapshot: Snapshot) -> Snapshot:
        """What ``snapshot`` shows once its values are stale (``visible`` past any age)."""
        return snapshot.visible(math.inf, self._max_staleness)

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


class Format(StrEnum):
    """The exposition formats served."""

    TEXT = "text"
    OPENMETRICS = "openmetrics"


#: Content-Type of each format (OpenMetrics 1.0.0 is what Prometheus asks for)
CONTENT_TYPES: Mapping[Format, str] = {
    Format.TEXT: CONTENT_TYPE_PLAIN_0_0_4,
    Format.OPENMETRICS: openmetrics.CONTENT_TYPE_LATEST,
}
_OM_EOF = b"# EOF\n"
#: the snapshot part is compressed once per poll, so it can afford a better ratio
_SNAPSHOT_GZIP_LEVEL = 6
#: the self-metrics part is compressed per scrape: fast
_LIVE_GZIP_LEVEL = 1


def encode(registry: Collector, fmt: Format) -> bytes:
    """Exposition of ``registry`` in ``fmt`` (OpenMetrics ends with ``# EOF``)."""
    if fmt is Format.OPENMETRICS:
        data: bytes = openmetrics.generate_latest(registry)  # type: ignore[no-untyped-call]
        return data
    return generate_latest(registry)


class Variants:
    """One snapshot view encoded every way it is served: identity and gzip, per format.

    The identity bytes are given; each gzip variant is compressed once, when first asked for
    or all at once by :meth:`compressed` (the serving process, before the view goes live).
    """

    def __init__(self, identity: Mapping[Format, bytes]) -> None:
        self.identity = identity
        self._gzip: dict[Format, bytes] = {}

    def body(self, fmt: Format, gzipped: bool) -> bytes:
        """The bytes of one variant."""
        if not gzipped:
            return self.identity[fmt]
        found = self._gzip.get(fmt)
        if found is None:  # two threads may both compress once: same bytes, no lock needed
            found = gzip.compress(self.identity[fmt], compresslevel=_SNAPSHOT_GZIP_LEVEL, mtime=0)
            self._gzip[fmt] = found
        return found

    def compressed(self) -> Variants:
        """The same variants, every gzip one compressed now."""
        for fmt in self.identity:
            self.body(fmt, gzipped=True)
        return self


@dataclass(frozen=True)
class Prepared:
    """A snapshot's exposition: its full view and its stale view, and when it turns stale."""

    full: Variants
    stale: Variants
    stale_after: float  # wall-clock time after which the stale view is served

    def variants(self, now: float) -> Variants:
        """The view to serve at ``now``."""
        return self.stale if now > self.stale_after else self.full


class RenderedSnapshot:
    """The current snapshot's exposition, encoded once per snapshot in every served variant.

    With a thousand datasets rendering takes a large fraction of a second and gzip more;
    snapshots change once per poll, scrapes come far more often (several Prometheus replicas,
    dashboards). ``prepare`` encodes a snapshot before it is swapped in, so a scrape is a byte
    copy: the small self-metrics part rendered per scrape, then the prepared snapshot bytes.
    """

    #: prepared snapshots kept: the current one and the next (prepared before its swap)
    KEEP = 2

    def __init__(self, collector: SnapshotCollector) -> None:
        self._collector = collector
        self._lock = threading.Lock()
        #: (raw snapshot, its encoding), newest first; replaced whole: readers need no lock
        self._prepared: tuple[tuple[Snapshot, Prepared], ...] = ()

    def prepare(self, snapshot: Snapshot) -> Prepared:
        """Encode ``snapshot`` (full and stale views) now: in a worker thread, before its swap."""
        return self._get(snapshot)

    def is_prepared(self) -> bool:
        """Whether the current snapshot's bytes are ready (a scrape would not render)."""
        return self._find(self._collector.raw()) is not None

    def variants(self) -> Variants:
        """The encoded variants of the current snapshot, under the staleness rule of now."""
        return self._get(self._collector.raw()).variants(self._collector.now())

    def render(self, fmt: Format, gzipped: bool = False) -> bytes:
        """The current snapshot's part of /metrics in one variant (rendered if not prepared)."""
        return self.variants().body(fmt, gzipped)

    def _find(self, snapshot: Snapshot) -> Prepared | None:
        for encoded, prepared in self._prepared:
            if encoded is snapshot:
                return prepared
        return None

    def _get(self, snapshot: Snapshot) -> Prepared:
        found = self._find(snapshot)
        if found is not None:
            return found
        with self._lock:
            # concurrent first scrapes encode once, the others wait for it
            found = self._find(snapshot)
            if found is not None:
                return found
            prepared = self.encode(snapshot)
            self._prepared = ((snapshot, prepared), *self._prepared)[: self.KEEP]
            return prepared

    def encode(self, snapshot: Snapshot) -> Prepared:
        """Encode ``snapshot``'s full and stale views without keeping them (for another process)."""
        return Prepared(
            self._encode(snapshot),
            self._encode(self._collector.stale_view(snapshot)),
            self._collector.stale_after(snapshot),
        )

    def _encode(self, snapshot: Snapshot) -> Variants:
        # family by family, so only one family's samples are alive at a time (at 10,000
        # datasets all of them would take hundreds of megabytes); the bytes are the same
        parts: dict[Format, list[bytes]] = {fmt: [] for fmt in Format}
        for family in self._collector.families(snapshot):
            one = _Families([family])
            for fmt in Format:
                parts[fmt].append(encode(one, fmt).removesuffix(_OM_EOF))
        parts[Format.OPENMETRICS].append(_OM_EOF)
        return Variants({fmt: b"".join(chunks) for fmt, chunks in parts.items()})


def live_part(registry: Collector, fmt: Format, gzipped: bool = False) -> bytes:
    """The self-metrics part of /metrics, rendered now (OpenMetrics: without its ``# EOF``).

    Gzipped, it is a gzip member of its own, followed on the wire by the snapshot's precomputed
    member: concatenated members are one valid gzip stream (RFC 1952, section 2.2), which Go's
    and Python's readers decode.
    """
    live = encode(registry, fmt)
    if fmt is Format.OPENMETRICS:
        live = live.removesuffix(_OM_EOF)  # the snapshot part carries the one EOF
    return gzip_member(live) if gzipped else live


def gzip_member(body: bytes) -> bytes:
    """``body`` as a gzip member of its own, compressed fast (it is small and made often)."""
    return gzip.compress(body, compresslevel=_LIVE_GZIP_LEVEL, mtime=0)


class LivePart:
    """A registry's part of /metrics (see :func:`live_part`), reused for ``max_age`` seconds.

    Encoding the exporter's own metrics costs a few milliseconds in prometheus_client, so bursts
    of scrapes share one rendering; Prometheus scrapes every 15-60 s and always gets a fresh one.
    """

    def __init__(self, registry: Collector, max_age: float = 1.0) -> None:
        self.registry = registry
        self._max_age = max_age
        self._cache: dict[tuple[Format, bool], tuple[float, bytes]] = {}

    def __call__(self, fmt: Format, gzipped: bool = False) -> bytes:
        """The part in one variant, at most ``max_age`` s old."""
        now = time.monotonic()
        cached = self._cache.get((fmt, gzipped))
        if cached is None or now - cached[0] > self._max_age:
            cached = (now, live_part(self.registry, fmt, gzipped))
            self._cache[(fmt, gzipped)] = cached
        return cached[1]


class Exposition:
    """/metrics of one process: its own metrics, then the current snapshot's prepared bytes."""

    def __init__(self, registry: Collector, rendered: RenderedSnapshot) -> None:
        self.live = LivePart(registry)
        self.rendered = rendered

    def is_prepared(self) -> bool:
        """Whether the current snapshot's bytes are ready (a scrape would not render)."""
        return self.rendered.is_prepared()

    def prepare(self) -> None:
        """Encode the current snapshot now (blocking: in a worker thread)."""
        self.rendered.variants()

    def body(self, fmt: Format, gzipped: bool = False) -> bytes:
        """The whole body in one variant."""
        return self.live(fmt, gzipped) + self.rendered.render(fmt, gzipped)


def _family(spec: MetricSpec) -> GaugeMetricFamily:
    assert spec.kind is Kind.GAUGE, f"{spec.name}: snapshot metrics are gauges"
    return GaugeMetricFamily(spec.name, spec.help, labels=list(spec.labels))
