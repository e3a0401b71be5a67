"""Golden exposition text for representative snapshots (kube-state-metrics style)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from iceprod_exporter.exposition.metrics import SPECS, Group
from iceprod_exporter.model.snapshot import Snapshot
from tests.support.collector_oracle import SnapshotCollector
from tests.support.snapshots import FLEET, NOW

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def expose(snapshot: Snapshot, compat: bool = False, now: float = NOW) -> str:
    registry = CollectorRegistry()
    SnapshotCollector(
        lambda: snapshot, max_staleness=600, compat=compat, clock=lambda: now, registry=registry
    )
    return generate_latest(registry).decode()


CASES = {
    "fleet": lambda: expose(FLEET),
    "fleet_compat": lambda: expose(FLEET, compat=True),
    "outage_within_staleness": lambda: expose(
        dataclasses.replace(FLEET, up=False, polled_at=NOW + 300), now=NOW + 300
    ),
    "outage_past_staleness": lambda: expose(
        dataclasses.replace(FLEET, up=False, polled_at=NOW + 900), now=NOW + 900
    ),
    "never_polled": lambda: expose(Snapshot()),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_exposition(case: str) -> None:
    text = CASES[case]()
    path = GOLDEN / f"{case}.prom"
    if UPDATE:
        path.write_text(text)
    assert text == path.read_text(), f"exposition drifted from {path}; UPDATE_GOLDEN=1 rewrites"


def test_exposition_parses_and_every_sample_belongs_to_the_table() -> None:
    names = {s.name for s in SPECS if s.group in (Group.ICEPROD, Group.COMPAT)}
    families = list(text_string_to_metric_families(expose(FLEET, compat=True)))
    assert {f.name for f in families} == names
    for family in families:
        for sample in family.samples:
            assert sample.timestamp is None, "samples must not carry timestamps"


def test_dense_states_and_unknown_statuses() -> None:
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(expose(FLEET))
        for s in f.samples
    }
    # dense: a status with no tasks is present as 0
    assert (
        samples[
            (
                "iceprod_dataset_tasks",
                (("dataset", "22001"), ("status", "suspended"), ("task_name", "filter")),
            )
        ]
        == 0
    )
    # unknown statuses from an IceProd 2 server are exported, not dropped
    assert samples[("iceprod_dataset_status", (("dataset", "20999"), ("status", "truncated")))] == 1
    assert (
        samples[
            (
                "iceprod_dataset_tasks",
                (("dataset", "20999"), ("status", "reset"), ("task_name", "main")),
            )
        ]
        == 1
    )
    assert samples[("iceprod_datasets", (("status", "truncated"),))] == 1
    # a forbidden dataset has metadata but no counts
    assert ("iceprod_dataset_jobs", (("dataset", "23000"), ("status", "processing"))) not in samples
