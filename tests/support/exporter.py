"""Helpers any test may use: free ports, plain HTTP, polling, parsing expositions, the daemon.

The helpers for one kind of test are its siblings in ``tests/support/``: ``http`` (certificates,
HTTPS, Chromium), ``monitoring`` (Prometheus, Alertmanager, PromQL), ``deploy`` (Dockerfile,
manifests), ``scripted_http`` (a scripted IceProd), ``snapshots`` (snapshot values).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families

#: exposition samples by (name, sorted label pairs)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    """Return a port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    """GET a URL; return (status, body), with status 0 when the connection failed."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def wait_for(
    condition: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.25,
    diagnose: Callable[[], str] | None = None,
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    extra = f"\n{diagnose()}" if diagnose else ""
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r}){extra}"
    )


def openmetrics_families(text: str) -> list[Metric]:
    """prometheus_client's OpenMetrics parser (which has no type hints there)."""
    return list(openmetrics_parser.text_string_to_metric_families(text))  # type: ignore[no-untyped-call]


def samples(text: str) -> Samples:
    """Every sample of a text exposition."""
    families = text_string_to_metric_families(text)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def start_exporter(
    env: Mapping[str, str], url: str, stdout: Path, stderr: Path | None = None
) -> subprocess.Popen[str]:
    """Run ``iceprod-exporter run`` with ``env``; return once ``url`` + ``readyz`` answers 200.

    Its output goes to files (an unread pipe would fill up and block it): stdout and stderr to
    ``stdout``, or stderr to ``stderr`` when given. A daemon that never gets ready is stopped.
    """
    with contextlib.ExitStack() as files:
        out = files.enter_context(stdout.open("w"))
        err: IO[str] | int = (
            files.enter_context(stderr.open("w")) if stderr is not None else subprocess.STDOUT
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "iceprod_exporter", "run"],
            env=dict(env),
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            text=True,
        )
    log = stderr or stdout
    try:
        wait_for(
            lambda: http_get(url + "readyz")[0] == 200,
            30,
            f"the exporter ready at {url}readyz",
            diagnose=lambda: log.read_text()[-3000:],
        )
    except BaseException:
        process.kill()
        process.wait(10)
        raise
    return process


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``iceprod-exporter ARGS`` as a subprocess whose environment is PATH and ``env`` only."""
    return subprocess.run(
        [sys.executable, "-m", "iceprod_exporter", *args],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def run_once(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``iceprod-exporter once`` as a subprocess with ``env``; fails the test unless it exits 0."""
    done = cli("once", env=env, timeout=60)
    assert done.returncode == 0, f"once exited {done.returncode}:\n{done.stderr[-4000:]}"
    return done
