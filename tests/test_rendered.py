"""Exposition as a byte copy: variants prepared once per snapshot, staleness at scrape time."""

from __future__ import annotations

import asyncio
import gzip

from prometheus_client import CollectorRegistry, Gauge

from iceprod_exporter import config
from iceprod_exporter.collector import Exposition, Format, RenderedSnapshot, SnapshotCollector
from iceprod_exporter.daemon import Exporter
from iceprod_exporter.simulator import SimulatedIceProd, build_store


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_prepared_bytes_are_reused_and_switch_to_the_stale_view() -> None:
    with SimulatedIceProd(build_store(datasets=4, seed=5)) as simulator:
        e = Exporter(config.validate({"api_url": simulator.url, "token": "t", "retries": "0"}))
        snapshot = asyncio.run(e.once())
    assert snapshot.last_success is not None
    clock = Clock()
    clock.now = snapshot.last_success + 1
    rendered = RenderedSnapshot(SnapshotCollector(lambda: snapshot, max_staleness=30, clock=clock))
    assert not rendered.is_prepared()
    rendered.prepare(snapshot)
    assert rendered.is_prepared()
    full = rendered.render(Format.TEXT)
    assert rendered.render(Format.TEXT) is full, "a byte copy, not a re-render"
    assert b"iceprod_dataset_info{" in full
    assert gzip.decompress(rendered.render(Format.TEXT, gzipped=True)) == full
    clock.now += 60  # past max_staleness: dataset series dropped, without a new prepare
    stale = rendered.render(Format.TEXT)
    assert b"iceprod_dataset_info{" not in stale and b"iceprod_up" in stale
    assert rendered.render(Format.TEXT) is stale, "the stale view is cached too"
    om = rendered.render(Format.OPENMETRICS)
    assert om.endswith(b"# EOF\n")


def test_exposition_concatenates_self_metrics_and_snapshot_gzip_members() -> None:
    with SimulatedIceProd(build_store(datasets=3, seed=6)) as simulator:
        e = Exporter(config.validate({"api_url": simulator.url, "token": "t", "retries": "0"}))
        asyncio.run(e.once())
    registry = CollectorRegistry()
    Gauge("live_thing", "a per-scrape value", registry=registry).set(7)
    metrics = Exposition(registry, e.rendered)
    for fmt in Format:
        plain = metrics.body(fmt)
        zipped = metrics.body(fmt, gzipped=True)
        assert gzip.decompress(zipped) == plain
        assert plain.startswith(b"# HELP live_thing")
        assert plain.count(b"# EOF") == (1 if fmt is Format.OPENMETRICS else 0)
