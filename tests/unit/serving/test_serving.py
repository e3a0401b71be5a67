"""The serving process's side in one process: the mirror of what the parent sent, over HTTP.

The process tests, which run the real ``iceprod-exporter run`` and act on its processes with
real signals, are in tests/integration/serving/test_serving.py.
"""

from __future__ import annotations

import gzip

import pytest

from iceprod_exporter.exposition.formats import Format
from iceprod_exporter.http.server import HttpServer
from iceprod_exporter.model.status import Status
from iceprod_exporter.serving import child
from iceprod_exporter.serving.child import Mirror
from iceprod_exporter.serving.store import StoredSnapshot, StoredSnapshotBuilder
from tests.support.clock import FakeClock
from tests.support.http import request
from tests.support.serving import parts


def _stored(full: bytes, stale: bytes, stale_after: float) -> StoredSnapshot:
    builder = StoredSnapshotBuilder(stale_after)
    for part in parts(full, stale):
        builder.add(part)
    return builder.finish()


def test_mirror_serves_the_view_of_now_and_reports_a_silent_parent() -> None:
    wall, mono = FakeClock(), FakeClock()
    mirror = Mirror(silent_after=30, clock=wall, monotonic=mono)
    assert not mirror.has_snapshot()
    mirror.serve(_stored(b"full 1\n", b"stale 1\n", stale_after=1010.0))
    assert not mirror.has_snapshot(), "the parent's own metrics have not arrived"
    mirror.heartbeat({fmt: b"own 1\n" for fmt in Format}, Status(True, "ok: polling", True, "ok"))
    assert mirror.has_snapshot()
    assert mirror.body(Format.TEXT) == b"own 1\nfull 1\n"
    assert gzip.decompress(mirror.body(Format.OPENMETRICS, gzipped=True)) == (
        b"own 1\nfull 1\n# EOF\n"
    ), "two gzip members, one stream"
    wall.now = 1011.0  # past stale_after: the stale view, without a word from the parent
    assert mirror.body(Format.TEXT) == b"own 1\nstale 1\n"
    mono.now += 29
    assert mirror.status().live
    mono.now += 2  # 31 s without a heartbeat: a wedged or stopped parent
    status = mirror.status()
    assert not status.live and not status.ready
    assert "has not reported for 31s" in status.live_reason
    mirror.heartbeat({fmt: b"own 2\n" for fmt in Format}, Status(True, "ok: polling", True, "ok"))
    assert mirror.status().live_reason == "ok: polling"


def test_metrics_answer_503_until_the_first_snapshot_arrives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(child, "FIRST_SNAPSHOT_WAIT", 0.2)
    mirror = Mirror()
    server = HttpServer(mirror, mirror.status, "127.0.0.1", 0)
    server.start()
    try:
        r = request("127.0.0.1", server.port, "/metrics")
        assert r.status == 503 and b"no snapshot received yet" in r.body
        # alive (a liveness probe must not kill it in its first second), not ready
        assert request("127.0.0.1", server.port, "/healthz").status == 200, "starting"
        assert request("127.0.0.1", server.port, "/readyz").status == 503, "starting"
        mirror.serve(_stored(b"a 1\n", b"a 0\n", stale_after=float("inf")))
        mirror.heartbeat({fmt: b"" for fmt in Format}, Status(True, "ok", True, "ok"))
        r = request("127.0.0.1", server.port, "/metrics")
        assert r.status == 200 and r.body.endswith(b"a 1\n")
        assert request("127.0.0.1", server.port, "/healthz").status == 200
    finally:
        server.stop()
