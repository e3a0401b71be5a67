"""Snapshot parts as the main process sends them to the serving process."""

from __future__ import annotations

from iceprod_exporter.exposition.encoding import Part, View
from iceprod_exporter.exposition.formats import BOTH, Format


def parts(full: bytes, stale: bytes) -> list[Part]:
    """Two views, their lines shared by both formats, as the parent sends them."""
    return [
        part
        for view, text in ((View.FULL, full), (View.STALE, stale))
        for part in (Part(view, BOTH, text), Part(view, (Format.OPENMETRICS,), b"# EOF\n"))
    ]
