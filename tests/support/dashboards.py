"""The dashboards' uids, as the tests expect the mixin to give them."""

from __future__ import annotations

UIDS = {
    "iceprod-overview.json": "iceprod-overview",
    "iceprod-dataset.json": "iceprod-dataset",
    "iceprod-exporter.json": "iceprod-exporter",
}
