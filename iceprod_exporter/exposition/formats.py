"""Exposition formats, their content types, gzip members, and a registry's part of /metrics."""

from __future__ import annotations

import gzip
import time
import zlib
from collections.abc import Mapping
from enum import StrEnum

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector


class Format(StrEnum):
    """The exposition formats served."""

    TEXT = "text"
    OPENMETRICS = "openmetrics"


#: Content-Type of each format (OpenMetrics 1.0.0 is what Prometheus asks for)
CONTENT_TYPES: Mapping[Format, str] = {
    Format.TEXT: CONTENT_TYPE_PLAIN_0_0_4,
    Format.OPENMETRICS: openmetrics.CONTENT_TYPE_LATEST,
}
BOTH: tuple[Format, ...] = (Format.TEXT, Format.OPENMETRICS)
#: the line that ends an OpenMetrics exposition
OM_EOF = b"# EOF\n"
#: the self-metrics part is compressed per scrape: fast
_OWN_METRICS_GZIP_LEVEL = 1
#: zlib's window bits for a gzip wrapper (16 + the largest window)
_GZIP_WBITS = 16 + zlib.MAX_WBITS


def encode(registry: Collector, fmt: Format) -> bytes:
    """Exposition of ``registry`` in ``fmt`` (OpenMetrics ends with ``# EOF``)."""
    if fmt is Format.OPENMETRICS:
        data: bytes = openmetrics.generate_latest(registry)  # type: ignore[no-untyped-call]
        return data
    return generate_latest(registry)


def gzip_member(body: bytes, level: int = _OWN_METRICS_GZIP_LEVEL) -> bytes:
    """``body`` as a gzip member of its own; by default compressed fast (small, made often)."""
    return gzip.compress(body, compresslevel=level, mtime=0)


def gunzip_member(member: bytes) -> bytes:
    """The bytes of one gzip member (zlib reads the gzip header itself: no Python loop)."""
    return zlib.decompress(member, wbits=_GZIP_WBITS)


def own_metrics_part(registry: Collector, fmt: Format, gzipped: bool = False) -> bytes:
    """A process's own metrics as the first part of /metrics (OpenMetrics: without ``# EOF``).

    Gzipped, it is a gzip member of its own, followed on the wire by the snapshot's precomputed
    members: concatenated members are one valid gzip stream (RFC 1952, section 2.2), which Go's
    and Python's readers decode.
    """
    own = encode(registry, fmt)
    if fmt is Format.OPENMETRICS:
        own = own.removesuffix(OM_EOF)  # the snapshot part carries the one EOF
    return gzip_member(own) if gzipped else own


class OwnMetricsPart:
    """A registry's part of /metrics (see :func:`own_metrics_part`), reused for ``max_age`` s.

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
            cached = (now, own_metrics_part(self.registry, fmt, gzipped))
            self._cache[(fmt, gzipped)] = cached
        return cached[1]
