"""Generated references match the code, and the metric table follows Prometheus naming."""

from __future__ import annotations

import re
from pathlib import Path

from iceprod_exporter import reference
from iceprod_exporter.exposition.metrics import SPECS, Group, Kind

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_generated_references_are_current() -> None:
    stale = reference.write(DOCS, check=True)
    assert not stale, f"regenerate with `iceprod-exporter docs`: {stale}"


def test_every_metric_is_documented() -> None:
    text = (DOCS / "metrics.md").read_text()
    for spec in SPECS:
        assert f"`{spec.name}`" in text


def test_names_follow_prometheus_conventions() -> None:
    names = [s.name for s in SPECS]
    assert len(names) == len(set(names))
    reserved_labels = {"job", "instance", "type", "cluster", "env", "service", "region"}
    for spec in SPECS:
        assert re.fullmatch(r"iceprod_[a-z0-9_]+", spec.name), spec.name
        assert spec.name.endswith("_total") == (spec.kind is Kind.COUNTER), spec.name
        assert not spec.name.endswith(("_count", "_sum", "_bucket")), spec.name
        assert not set(spec.labels) & reserved_labels, spec.name
        assert "by_" not in spec.name, spec.name
        assert spec.help.endswith("."), spec.name
        if spec.group is Group.EXPORTER:
            assert spec.name.startswith("iceprod_exporter_"), spec.name
        else:
            assert spec.sampler is not None and spec.kind is Kind.GAUGE, spec.name
        if "timestamp" in spec.name or "duration" in spec.name or "walltime" in spec.name:
            assert spec.name.endswith("_seconds") or spec.name.endswith("_seconds_total")


def test_cached_values_say_so() -> None:
    for spec in SPECS:
        if spec.group is not Group.EXPORTER and spec.labels and spec.name != "iceprod_up":
            assert "Cached" in spec.help, spec.name
