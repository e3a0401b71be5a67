"""The serving process: the HTTP server apart from the poller, fed with prepared bytes.

The process tests run the real ``iceprod-exporter run`` against the simulated IceProd and act on
its real processes with real signals.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iceprod_exporter.exposition.formats import Format
from iceprod_exporter.model.status import Status
from iceprod_exporter.serving.parent import ServingProcess
from iceprod_exporter.serving.protocol import ServingOptions
from iceprod_simulator import SimulatedIceProd, build_store
from tests.support.exporter import free_port, samples, wait_for
from tests.support.http import request
from tests.support.serving import parts


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


def _resident(pid: int) -> float:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return float(pages * os.sysconf("SC_PAGE_SIZE"))


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
    process.start(float("inf"), parts(b"a 1\n", b""))
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


def test_the_serving_process_leaves_with_its_parent(
    simulator: SimulatedIceProd, tmp_path: Path
) -> None:
    proc, port, child = _start(simulator, tmp_path / "exporter.log")
    proc.kill()  # no chance to stop the child: it must notice on its own
    proc.wait(10)
    wait_for(lambda: _gone(child), 10, "serving process gone after its parent died")
    with pytest.raises(OSError):
        request("127.0.0.1", port, "/healthz", timeout=2)


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
