"""Exposition as a byte copy: variants prepared once per snapshot, staleness at scrape time."""

from __future__ import annotations

import asyncio
import gzip

from prometheus_client import CollectorRegistry, Gauge

from iceprod_exporter import config
from iceprod_exporter.daemon.exporter import Exporter
from iceprod_exporter.exposition.encoding import SnapshotEncoder
from iceprod_exporter.exposition.formats import Format
from iceprod_exporter.serving.local import LocalExposition, LocalStore
from iceprod_simulator import SimulatedIceProd, build_store
from tests.support.clock import FakeClock


def test_prepared_bytes_are_reused_and_switch_to_the_stale_view() -> None:
    with SimulatedIceProd(build_store(datasets=4, seed=5)) as simulator:
        e = Exporter(config.validate({"api_url": simulator.url, "token": "t", "retries": "0"}))
        snapshot = asyncio.run(e.once())
    assert snapshot.last_success is not None
    clock = FakeClock(0.0)
    clock.now = snapshot.last_success + 1
    store = LocalStore(lambda: snapshot, SnapshotEncoder(max_staleness=30), clock)
    assert not store.has_current()
    store.store(snapshot)
    assert store.has_current()
    full = store.current().body(Format.TEXT, gzipped=False)
    assert store.current() is store.current(), "a byte copy, not a re-encoding"
    assert b"iceprod_dataset_info{" in full
    assert gzip.decompress(store.current().body(Format.TEXT, gzipped=True)) == full
    clock.now += 60  # past max_staleness: dataset series dropped, without a new encoding
    stale = store.current().body(Format.TEXT, gzipped=False)
    assert b"iceprod_dataset_info{" not in stale and b"iceprod_up" in stale
    assert store.current() is store.current(), "the stale view is kept too"
    om = store.current().body(Format.OPENMETRICS, gzipped=False)
    assert om.endswith(b"# EOF\n")


def test_exposition_concatenates_self_metrics_and_snapshot_gzip_members() -> None:
    with SimulatedIceProd(build_store(datasets=3, seed=6)) as simulator:
        e = Exporter(config.validate({"api_url": simulator.url, "token": "t", "retries": "0"}))
        asyncio.run(e.once())
    registry = CollectorRegistry()
    Gauge("live_thing", "a per-scrape value", registry=registry).set(7)
    metrics = LocalExposition(registry, e.metrics.store)
    for fmt in Format:
        plain = metrics.body(fmt)
        zipped = metrics.body(fmt, gzipped=True)
        assert gzip.decompress(zipped) == plain
        assert plain.startswith(b"# HELP live_thing")
        assert plain.count(b"# EOF") == (1 if fmt is Format.OPENMETRICS else 0)
