"""One module per dashboard; :data:`DASHBOARDS` maps each file name to its builder."""

from __future__ import annotations

from collections.abc import Callable

from grafana_foundation_sdk.models.dashboard import Dashboard

from ..config import Config
from . import dataset, exporter, overview

#: file in grafana/dashboards/ -> the function that builds it
DASHBOARDS: dict[str, Callable[[Config], Dashboard]] = {
    "iceprod-overview.json": overview.build,
    "iceprod-dataset.json": dataset.build,
    "iceprod-exporter.json": exporter.build,
}
