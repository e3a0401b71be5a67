"""``once`` as a process: the exposition on stdout, and its exit code."""

from __future__ import annotations

import io
import subprocess

from prometheus_client.parser import text_string_to_metric_families

from iceprod_simulator import SimulatedIceProd, build_store
from tests.support.exporter import cli


def once(*args: str) -> subprocess.CompletedProcess[str]:
    return cli("once", "--token", "t", "--retries", "0", "--timeout", "3", *args)


def test_once_prints_only_the_exposition_and_exits_0() -> None:
    with SimulatedIceProd(build_store(datasets=4, seed=2)) as simulator:
        result = once("--api-url", simulator.url, "--compat-dataset-monitor")
    assert result.returncode == 0, result.stderr
    families = {f.name: f for f in text_string_to_metric_families(result.stdout)}
    assert families["iceprod_up"].samples[0].value == 1
    assert "iceprod_jobs" in families and "iceprod_future_resources_hours" in families
    assert '"event": "poll.finished"' in result.stderr, "logs go to stderr"
    assert not any(line.startswith("{") for line in io.StringIO(result.stdout))


def test_once_exits_1_when_the_poll_fails() -> None:
    result = once("--api-url", "http://127.0.0.1:9")
    assert result.returncode == 1
    families = {f.name: f for f in text_string_to_metric_families(result.stdout)}
    assert families["iceprod_up"].samples[0].value == 0
