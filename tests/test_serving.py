"""The serving process: the HTTP server apart from the poller, fed with prepared bytes.

The process tests run the real ``iceprod-exporter run`` against the simulated IceProd and act on
its real processes with real signals.
"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iceprod_exporter.exposition.encoding import Part, View
from iceprod_exporter.exposition.formats import BOTH, Format
from iceprod_exporter.http.server import HttpServer
from iceprod_exporter.model.status import Status
from iceprod_exporter.serving import child
from iceprod_exporter.serving.child import Mirror
from iceprod_exporter.serving.parent import ServingProcess
from iceprod_exporter.serving.protocol import ServingOptions
from iceprod_exporter.serving.store import StoredSnapshot, StoredSnapshotBuilder
from iceprod_simulator import SimulatedIceProd, build_store

from .http_support import request
from .support import free_port, samples, wait_for


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _parts(full: bytes, stale: bytes) -> list[Part]:
    """Two views, their lines shared by both formats, as the parent sends them."""
    return [
        part
        for view, text in ((View.FULL, full), (View.STALE, stale))
        for part in (Part(view, BOTH, text), Part(view, (Format.OPENMETRICS,), b"# EOF\n"))
    ]


def _stored(full: bytes, stale: bytes, stale_after: float) -> StoredSnapshot:
    builder = StoredSnapshotBuilder(stale_after)
    for part in _parts(full, stale):
        builder.add(part)
    return builder.finish()


def test_mirror_serves_the_view_of_now_and_reports_a_silent_parent() -> None:
    wall, mono = Clock(), Clock()
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


@pytest.mark.integration  # a real child process and 2 s of silence
def test_a_parent_that_stops_reporting_fails_the_childs_healthz(tmp_path: Path) -> None:
    """A real serving process: heartbeats stop (a bug, a wedged parent), /healthz turns 503."""
    from iceprod_exporter.logs import LogFormat

    beats = 0

    def heartbeat() -> tuple[dict[Format, bytes], Status]:
        nonlocal beats
        beats += 1
        if beats > 2:
            raise RuntimeError("status() broke")
        return {fmt: b"" for fmt in Format}, Status(True, "ok: polling", True, "ok")

    options = ServingOptions("127.0.0.1", 0, None, "info", LogFormat.JSON, 2.0)
    process = ServingProcess(options, heartbeat)
    process.start(float("inf"), _parts(b"a 1\n", b""))
    try:
        assert request("127.0.0.1", process.port, "/healthz").status == 200
        assert request("127.0.0.1", process.port, "/metrics").body.endswith(b"\na 1\n")
        r = wait_for(
            lambda: (r := request("127.0.0.1", process.port, "/healthz")).status == 503 and r,
            10,
            "healthz 503",
        )
        assert b"main process has not reported" in r.body
        assert request("127.0.0.1", process.port, "/readyz").status == 503
    finally:
        process.stop()


#: the process tests start the real daemon (2-3 s each): the integration tier
process_test = pytest.mark.integration


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatedIceProd]:
    with SimulatedIceProd(build_store(datasets=8, seed=4)) as sim:
        yield sim


def _start(simulator: SimulatedIceProd, log: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    """``iceprod-exporter run`` in a session of its own: (process, port, serving child pid)."""
    port = free_port()
    argv = [sys.executable, "-m", "iceprod_exporter", "run", "--api-url", simulator.url,
            "--token", "t", "--port", str(port), "--listen-address", "127.0.0.1",
            "--poll-interval", "2", "--log-format", "json"]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(lambda: _ready(port), 60, "exporter ready", diagnose=log.read_text)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert len(children) == 1, children
    return proc, port, int(children[0])


def _ready(port: int) -> bool:
    try:
        return request("127.0.0.1", port, "/readyz", timeout=2).status == 200
    except OSError:
        return False


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in status  # exited, not yet reaped by its (dead) parent's reaper


@process_test
def test_sigterm_to_the_whole_group_stops_both_processes_gracefully(
    simulator: SimulatedIceProd, tmp_path: Path
) -> None:
    log = tmp_path / "exporter.log"
    proc, port, child = _start(simulator, log)
    assert request("127.0.0.1", port, "/metrics").status == 200
    os.killpg(proc.pid, signal.SIGTERM)  # what systemd sends to every process of the unit
    assert proc.wait(20) == 0
    wait_for(lambda: _gone(child), 10, "serving process gone")
    text = log.read_text()
    assert '"exporter.stopped"' in text
    assert "Traceback" not in text and '"level": "error"' not in text, text[-2000:]


def _resident(pid: int) -> float:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return float(pages * os.sysconf("SC_PAGE_SIZE"))


@process_test
def test_both_processes_report_their_resident_memory(
    simulator: SimulatedIceProd, tmp_path: Path
) -> None:
    proc, port, child = _start(simulator, tmp_path / "exporter.log")
    try:
        values = samples(request("127.0.0.1", port, "/metrics").body.decode())
        served = values[("iceprod_exporter_serving_resident_memory_bytes", ())]
        main = values[("process_resident_memory_bytes", ())]
        # each gauge matches its own process (they differ by tens of MiB), within 5 MiB of drift
        assert abs(served - _resident(child)) < 5 * 2**20, (served, _resident(child))
        assert abs(main - _resident(proc.pid)) < 5 * 2**20, (main, _resident(proc.pid))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)


@process_test
def test_the_serving_process_leaves_with_its_parent(
    simulator: SimulatedIceProd, tmp_path: Path
) -> None:
    proc, port, child = _start(simulator, tmp_path / "exporter.log")
    proc.kill()  # no chance to stop the child: it must notice on its own
    proc.wait(10)
    wait_for(lambda: _gone(child), 10, "serving process gone after its parent died")
    with pytest.raises(OSError):
        request("127.0.0.1", port, "/healthz", timeout=2)


@process_test
def test_a_dead_serving_process_stops_the_exporter_with_one_line(
    simulator: SimulatedIceProd, tmp_path: Path
) -> None:
    log = tmp_path / "exporter.log"
    proc, _, child = _start(simulator, log)
    started = time.monotonic()
    os.kill(child, signal.SIGKILL)
    assert proc.wait(20) == 1, "a non-zero exit: the supervisor restarts the exporter"
    assert time.monotonic() - started < 10
    text = log.read_text()
    assert '"serving.exited"' in text
    assert text.strip().splitlines()[-1] == (
        "iceprod-exporter: error: the HTTP serving process exited; stopping"
    )
    assert "Traceback" not in text, text[-2000:]
