"""/metrics served from the polling process itself: for ``once`` and for in-process tests.

The daemon serves from a process of its own (:mod:`.parent`, :mod:`.child`); ``once`` prints the
same bytes without one, and an :class:`~iceprod_exporter.http.server.HttpServer` can serve a
:class:`LocalExposition` in a test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from prometheus_client.registry import Collector

from iceprod_exporter.exposition.encoding import SnapshotEncoder
from iceprod_exporter.exposition.formats import Format, OwnMetricsPart
from iceprod_exporter.model.snapshot import Snapshot
from iceprod_exporter.serving.store import StoredSnapshot, StoredSnapshotBuilder, StoredView


class LocalStore:
    """The current snapshot's bytes, encoded once per snapshot.

    ``store`` encodes a snapshot before it is swapped in, so a scrape is a byte copy.
    """

    #: stored snapshots kept: the current one and the next (stored before its swap)
    KEEP = 2

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        encoder: SnapshotEncoder,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._snapshot = snapshot
        self.encoder = encoder
        self._clock = clock
        self._lock = threading.Lock()
        #: (snapshot, its bytes), newest first; replaced whole: readers need no lock
        self._stored: tuple[tuple[Snapshot, StoredSnapshot], ...] = ()

    def store(self, snapshot: Snapshot) -> StoredSnapshot:
        """Encode ``snapshot`` (full and stale views) now: in a worker thread, before its swap."""
        found = self._find(snapshot)
        if found is not None:
            return found
        with self._lock:
            # concurrent first scrapes encode once, the others wait for it
            found = self._find(snapshot)
            if found is not None:
                return found
            builder = StoredSnapshotBuilder(self.encoder.stale_after(snapshot))
            for part in self.encoder.parts(snapshot):
                builder.add(part)
            stored = builder.finish()
            self._stored = ((snapshot, stored), *self._stored)[: self.KEEP]
            return stored

    def has_current(self) -> bool:
        """Whether the current snapshot's bytes are ready (a scrape would not encode)."""
        return self._find(self._snapshot()) is not None

    def current(self) -> StoredView:
        """The current snapshot's bytes, in the view the staleness rule gives now."""
        return self.store(self._snapshot()).view(self._clock())

    def _find(self, snapshot: Snapshot) -> StoredSnapshot | None:
        for encoded, stored in self._stored:
            if encoded is snapshot:
                return stored
        return None


class LocalExposition:
    """/metrics of one process: its own metrics, then the current snapshot's stored bytes."""

    def __init__(self, registry: Collector, store: LocalStore) -> None:
        self.own = OwnMetricsPart(registry)
        self.store = store

    def has_snapshot(self) -> bool:
        """Whether the current snapshot's bytes are ready (a scrape would not encode)."""
        return self.store.has_current()

    def wait_for_snapshot(self) -> None:
        """Encode the current snapshot now (blocking: in a worker thread)."""
        self.store.current()

    def chunks(self, fmt: Format, gzipped: bool = False) -> Sequence[bytes]:
        """The whole body in one variant, in pieces: own metrics, then the snapshot's."""
        return (self.own(fmt, gzipped), *self.store.current().chunks(fmt, gzipped))

    def body(self, fmt: Format, gzipped: bool = False) -> bytes:
        """The whole body in one variant, joined."""
        return b"".join(self.chunks(fmt, gzipped))
