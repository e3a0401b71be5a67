"""Turns the current snapshot into metric families, and encodes them once per snapshot."""

from __future__ import annotations

import gzip
import math
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import cast

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .metrics import SPECS, Group, Kind, MetricSpec, Sample
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

    @property
    def specs(self) -> Sequence[MetricSpec]:
        """The table rows this collector exposes, in table order."""
        return self._specs

    def samples(self, snapshot: Snapshot) -> Iterator[tuple[MetricSpec, Iterable[Sample]]]:
        """Each exposed metric of one snapshot with its samples, in table order."""
        for spec in self._specs:
            assert spec.sampler is not None
            yield spec, spec.sampler(snapshot)

    def families(self, snapshot: Snapshot) -> Iterator[Metric]:
        """Families of one snapshot, in table order, as prometheus_client metric objects."""
        for spec, samples in self.samples(snapshot):
            family = _family(spec)
            for labels, value in samples:
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


class View(StrEnum):
    """The two views of a snapshot: as polled, and once its dataset values are stale."""

    FULL = "full"
    STALE = "stale"


#: Content-Type of each format (OpenMetrics 1.0.0 is what Prometheus asks for)
CONTENT_TYPES: Mapping[Format, str] = {
    Format.TEXT: CONTENT_TYPE_PLAIN_0_0_4,
    Format.OPENMETRICS: openmetrics.CONTENT_TYPE_LATEST,
}
BOTH: tuple[Format, ...] = (Format.TEXT, Format.OPENMETRICS)
_OM_EOF = b"# EOF\n"
#: the snapshot part is compressed once per poll, so it can afford a better ratio
_SNAPSHOT_GZIP_LEVEL = 6
#: the self-metrics part is compressed per scrape: fast
_LIVE_GZIP_LEVEL = 1
#: zlib's window bits for a gzip wrapper (16 + the largest window)
_GZIP_WBITS = 16 + zlib.MAX_WBITS
#: sample lines per part at most: a family of 200,000 series is never one string in memory
PART_LINES = 4096


def encode(registry: Collector, fmt: Format) -> bytes:
    """Exposition of ``registry`` in ``fmt`` (OpenMetrics ends with ``# EOF``)."""
    if fmt is Format.OPENMETRICS:
        data: bytes = openmetrics.generate_latest(registry)  # type: ignore[no-untyped-call]
        return data
    return generate_latest(registry)


@dataclass(frozen=True, slots=True)
class Part:
    """A piece of one view's exposition: the same bytes in each of ``formats``."""

    view: View
    formats: tuple[Format, ...]
    data: bytes


class FamilyEncoder:
    """Writes one table metric's family straight from its samples.

    The bytes equal prometheus_client's in both formats (a property test holds them to it), but
    no sample objects are made: at 10,000 datasets those cost hundreds of megabytes. A gauge's
    sample lines are the same in both formats, so they are one part, shared by both.
    """

    def __init__(self, spec: MetricSpec) -> None:
        family = _Families([_family(spec)])
        #: the HELP and TYPE lines, as prometheus_client writes them
        self.headers = {fmt: encode(family, fmt).removesuffix(_OM_EOF) for fmt in Format}
        order = sorted(range(len(spec.labels)), key=spec.labels.__getitem__)
        self._name = spec.name
        self._labels = [(i, f'{spec.labels[i]}="') for i in order]

    def parts(self, samples: Iterable[Sample]) -> Iterator[tuple[tuple[Format, ...], bytes]]:
        """The family's header, per format, then its sample lines, for both formats."""
        text, om = self.headers[Format.TEXT], self.headers[Format.OPENMETRICS]
        if text == om:
            yield BOTH, text
        else:  # a help text with a double quote: OpenMetrics escapes it
            yield (Format.TEXT,), text
            yield (Format.OPENMETRICS,), om
        name, labels = self._name, self._labels
        lines: list[str] = []
        for values, value in samples:
            if values:
                inner = ",".join(f'{key}{_escape(values[i])}"' for i, key in labels)
                lines.append(f"{name}{{{inner}}} {_go_float(value)}\n")
            else:
                lines.append(f"{name} {_go_float(value)}\n")
            if len(lines) == PART_LINES:
                yield BOTH, "".join(lines).encode()
                lines = []
        if lines:
            yield BOTH, "".join(lines).encode()


#: prometheus_client's own float formatting (Go's, as Prometheus parses it)
_go_float = cast(Callable[[float], str], floatToGoString)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class Variants:
    """One snapshot view, per format, held once: as gzip members, decompressed for identity.

    Both formats share their sample lines' members (a gzip body may be several members, which
    Prometheus, Go and Python read; curl's ``--compressed`` reads only the first). Prometheus
    always asks for gzip; keeping identity bytes as well would more than double what the
    serving process holds (27 MiB at 10,000 datasets) for the rare client that does not, which
    pays a decompression instead (tens of milliseconds at 10,000).
    """

    def __init__(self, gzipped: Mapping[Format, Sequence[bytes]]) -> None:
        self._gzip = gzipped

    def chunks(self, fmt: Format, gzipped: bool) -> Sequence[bytes]:
        """The bytes of one variant, in pieces: the members held, or each one decompressed."""
        members = self._gzip[fmt]
        return members if gzipped else [gunzip_member(member) for member in members]

    def body(self, fmt: Format, gzipped: bool) -> bytes:
        """The bytes of one variant, joined."""
        return b"".join(self.chunks(fmt, gzipped))


@dataclass(frozen=True)
class Prepared:
    """A snapshot's exposition: its full view and its stale view, and when it turns stale."""

    full: Variants
    stale: Variants
    stale_after: float  # wall-clock time after which the stale view is served

    def variants(self, now: float) -> Variants:
        """The view to serve at ``now``."""
        return self.stale if now > self.stale_after else self.full


class PreparedBuilder:
    """Assembles a :class:`Prepared` from parts as they arrive, compressing on the way.

    Neither the sender nor the builder ever holds a whole body: each part is compressed as it
    comes, once, as a gzip member of its own that both formats share, and dropped.
    """

    def __init__(self, stale_after: float) -> None:
        self._stale_after = stale_after
        self._gzip: dict[tuple[View, Format], list[bytes]] = {
            (view, fmt): [] for view in View for fmt in Format
        }

    def add(self, part: Part) -> None:
        """Take one part."""
        member = gzip_member(part.data, _SNAPSHOT_GZIP_LEVEL)
        for fmt in part.formats:
            self._gzip[(part.view, fmt)].append(member)

    def finish(self) -> Prepared:
        """The assembled views."""

        def view(v: View) -> Variants:
            return Variants({fmt: tuple(self._gzip[(v, fmt)]) for fmt in Format})

        return Prepared(view(View.FULL), view(View.STALE), self._stale_after)


class RenderedSnapshot:
    """The current snapshot's exposition, encoded once per snapshot in every served variant.

    With a thousand datasets encoding takes a large fraction of a second and gzip more;
    snapshots change once per poll, scrapes come far more often (several Prometheus replicas,
    dashboards). ``prepare`` encodes a snapshot before it is swapped in, so a scrape is a byte
    copy: the small self-metrics part rendered per scrape, then the prepared snapshot bytes.
    """

    #: prepared snapshots kept: the current one and the next (prepared before its swap)
    KEEP = 2

    def __init__(self, collector: SnapshotCollector) -> None:
        self._collector = collector
        self._encoders = {spec.name: FamilyEncoder(spec) for spec in collector.specs}
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

    def stale_after(self, snapshot: Snapshot) -> float:
        """When ``snapshot``'s stale view replaces its full one."""
        return self._collector.stale_after(snapshot)

    def parts(self, snapshot: Snapshot) -> Iterator[Part]:
        """``snapshot``'s full and stale views, family by family, as they are encoded.

        Only one family's bytes are made at a time, so another process can be sent them
        without this one ever holding a whole body.
        """
        views = ((View.FULL, snapshot), (View.STALE, self._collector.stale_view(snapshot)))
        for view, shown in views:
            for spec, samples in self._collector.samples(shown):
                for formats, data in self._encoders[spec.name].parts(samples):
                    yield Part(view, formats, data)
            yield Part(view, (Format.OPENMETRICS,), _OM_EOF)

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
            builder = PreparedBuilder(self.stale_after(snapshot))
            for part in self.parts(snapshot):
                builder.add(part)
            prepared = builder.finish()
            self._prepared = ((snapshot, prepared), *self._prepared)[: self.KEEP]
            return prepared


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


def gzip_member(body: bytes, level: int = _LIVE_GZIP_LEVEL) -> bytes:
    """``body`` as a gzip member of its own; by default compressed fast (small, made often)."""
    return gzip.compress(body, compresslevel=level, mtime=0)


def gunzip_member(member: bytes) -> bytes:
    """The bytes of one gzip member (zlib reads the gzip header itself: no Python loop)."""
    return zlib.decompress(member, wbits=_GZIP_WBITS)


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

    def chunks(self, fmt: Format, gzipped: bool = False) -> Sequence[bytes]:
        """The whole body in one variant, in pieces: own metrics, then the snapshot's."""
        return (self.live(fmt, gzipped), *self.rendered.variants().chunks(fmt, gzipped))

    def body(self, fmt: Format, gzipped: bool = False) -> bytes:
        """The whole body in one variant, joined."""
        return b"".join(self.chunks(fmt, gzipped))


def _family(spec: MetricSpec) -> GaugeMetricFamily:
    assert spec.kind is Kind.GAUGE, f"{spec.name}: snapshot metrics are gauges"
    return GaugeMetricFamily(spec.name, spec.help, labels=list(spec.labels))
