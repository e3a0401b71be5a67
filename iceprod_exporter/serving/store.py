"""The bytes a snapshot is served from: each part compressed once, as a gzip member of its own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from iceprod_exporter.exposition.encoding import Part, View
from iceprod_exporter.exposition.formats import Format, gunzip_member, gzip_member

#: the snapshot part is compressed once per poll, so it can afford a better ratio
_SNAPSHOT_GZIP_LEVEL = 6


class StoredView:
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
class StoredSnapshot:
    """A snapshot's exposition: its full view and its stale view, and when it turns stale."""

    full: StoredView
    stale: StoredView
    stale_after: float  # wall-clock time after which the stale view is served

    def view(self, now: float) -> StoredView:
        """The view to serve at ``now``."""
        return self.stale if now > self.stale_after else self.full


class StoredSnapshotBuilder:
    """Assembles a :class:`StoredSnapshot` from parts as they arrive, compressing on the way.

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

    def finish(self) -> StoredSnapshot:
        """The assembled views."""

        def view(v: View) -> StoredView:
            return StoredView({fmt: tuple(self._gzip[(v, fmt)]) for fmt in Format})

        return StoredSnapshot(view(View.FULL), view(View.STALE), self._stale_after)
