"""A snapshot encoded family by family, straight from the metric table, into parts."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import cast

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from iceprod_exporter.exposition.formats import BOTH, OM_EOF, Format, encode
from iceprod_exporter.exposition.metrics import SPECS, Group, Kind, MetricSpec, Sample
from iceprod_exporter.model.snapshot import Snapshot

#: sample lines per part at most: a family of 200,000 series is never one string in memory
PART_LINES = 4096


class View(StrEnum):
    """The two views of a snapshot: as polled, and once its dataset values are stale."""

    FULL = "full"
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class Part:
    """A piece of one view's exposition: the same bytes in each of ``formats``."""

    view: View
    formats: tuple[Format, ...]
    data: bytes


def family(spec: MetricSpec) -> GaugeMetricFamily:
    """An empty prometheus_client family for a snapshot metric of the table."""
    assert spec.kind is Kind.GAUGE, f"{spec.name}: snapshot metrics are gauges"
    return GaugeMetricFamily(spec.name, spec.help, labels=list(spec.labels))


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


class FamilyEncoder:
    """Writes one table metric's family straight from its samples.

    The bytes equal prometheus_client's in both formats (a property test holds them to it), but
    no sample objects are made: at 10,000 datasets those cost hundreds of megabytes. A gauge's
    sample lines are the same in both formats, so they are one part, shared by both.
    """

    def __init__(self, spec: MetricSpec) -> None:
        headers = _Families([family(spec)])
        #: the HELP and TYPE lines, as prometheus_client writes them
        self.headers = {fmt: encode(headers, fmt).removesuffix(OM_EOF) for fmt in Format}
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


class SnapshotEncoder:
    """Encodes a snapshot's two views (full, stale) with the table's encoders, part by part.

    ``compat`` adds dataset_monitor's metric names; ``max_staleness`` is how long after the last
    successful poll the dataset values stay exposed.
    """

    def __init__(self, *, max_staleness: float, compat: bool = False) -> None:
        self.max_staleness = max_staleness
        groups = {Group.ICEPROD, Group.COMPAT} if compat else {Group.ICEPROD}
        #: the table rows exposed, in table order
        self.specs: Sequence[MetricSpec] = [
            s for s in SPECS if s.group in groups and s.sampler is not None
        ]
        self._encoders = {spec.name: FamilyEncoder(spec) for spec in self.specs}

    def samples(self, snapshot: Snapshot) -> Iterator[tuple[MetricSpec, Iterable[Sample]]]:
        """Each exposed metric of one snapshot with its samples, in table order."""
        for spec in self.specs:
            assert spec.sampler is not None
            yield spec, spec.sampler(snapshot)

    def stale_after(self, snapshot: Snapshot) -> float:
        """When ``snapshot``'s dataset values turn stale (at once if no poll succeeded)."""
        if snapshot.last_success is None:
            return -math.inf
        return snapshot.last_success + self.max_staleness

    def stale_view(self, snapshot: Snapshot) -> Snapshot:
        """What ``snapshot`` shows once its values are stale (``visible`` past any age)."""
        return snapshot.visible(math.inf, self.max_staleness)

    def parts(self, snapshot: Snapshot) -> Iterator[Part]:
        """``snapshot``'s full and stale views, family by family, as they are encoded.

        Only one family's bytes are made at a time, so another process can be sent them
        without this one ever holding a whole body.
        """
        views = ((View.FULL, snapshot), (View.STALE, self.stale_view(snapshot)))
        for view, shown in views:
            for spec, samples in self.samples(shown):
                for formats, data in self._encoders[spec.name].parts(samples):
                    yield Part(view, formats, data)
            yield Part(view, (Format.OPENMETRICS,), OM_EOF)
