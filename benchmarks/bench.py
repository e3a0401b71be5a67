"""Benchmark: the exporter against a simulated IceProd of 1,000 datasets, in separate processes.

Prints, per rate-limit setting: poll cycle time, API requests per cycle, /metrics latency
(median and p99) measured while a poll is running, series exposed and resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the test helpers, for scripts run from anywhere
from tests.support import free_port as free_port  # noqa: E402 (needs the path; re-exported)

EXPORTER = [sys.executable, "-m", "iceprod_exporter"]
IN_FLIGHT = re.compile(rb"^iceprod_exporter_api_requests_in_flight (\S+)$", re.MULTILINE)


def p99(values: list[float]) -> float:
    """The 99th percentile (inclusive); the one value of a single sample, NaN of none."""
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def count_series(text: str) -> int:
    """Samples in an exposition text."""
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def get(url: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read()
    return time.perf_counter() - started, body


def values(body: bytes) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def wait(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = predicate()
        except OSError:
            result = None
        if result:
            return result
        time.sleep(0.1)
    raise SystemExit(f"benchmark: timed out waiting for {what}")


@contextmanager
def process(
    argv: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the exporter and its serving process)."""
    found = [pid]
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        found += process_tree(int(child))
    return found


def proc_status(pid: int, key: str) -> int:
    """A field of /proc/PID/status summed over the process tree (kB for memory fields)."""
    total = 0
    for member in process_tree(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                total += int(line.split()[1])
    return total


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory of the exporter's processes (the sum of each one's peak)."""
    return proc_status(pid, "VmHWM") / 1024


def poll_events(log: Path) -> list[dict[str, float]]:
    events = []
    for line in log.read_text().splitlines():
        if '"poll.finished"' in line:
            events.append(json.loads(line))
    return events


def run_case(api_url: str, rate_limit: float, cycles: int, workdir: Path) -> dict[str, float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    log = workdir / f"exporter-{rate_limit:g}.log"
    argv = [
        *EXPORTER,
        "run",
        "--api-url",
        api_url,
        "--token",
        "bench",
        "--port",
        str(port),
        "--listen-address",
        "127.0.0.1",
        "--poll-interval",
        "1",
        "--rate-limit",
        str(rate_limit),
        "--log-format",
        "json",
    ]
    with process(argv, log) as proc:
        wait(lambda: poll_events(log), 900, "first poll")
        latencies: list[float] = []
        # polls run back to back (interval 1 s < cycle time): scrape serially meanwhile and
        # keep the latencies of scrapes that found a poll in flight
        while len(poll_events(log)) < 1 + cycles:
            elapsed, body = get(url)
            in_flight = IN_FLIGHT.search(body)
            if in_flight and float(in_flight.group(1)) > 0:
                latencies.append(elapsed)
            time.sleep(0.01)
        _, body = get(url)
        done = values(body)
        first, *steady = poll_events(log)[: 1 + cycles]
        return {
            "first poll (s, with task_stats)": first["duration"],
            "first poll requests": first["requests"],
            "steady poll (s)": statistics.mean(e["duration"] for e in steady),
            "steady requests per poll": statistics.mean(e["requests"] for e in steady),
            "scrapes during polls": len(latencies),
            "/metrics median (ms)": statistics.median(latencies) * 1000,
            "/metrics p99 (ms)": p99(latencies) * 1000,
            "/metrics max (ms)": max(latencies) * 1000,
            "series exposed": count_series(body.decode()),
            "resident memory (MiB)": done["process_resident_memory_bytes"] / 2**20,
            "peak resident memory (MiB)": peak_rss_mib(proc.pid),
            "iceprod_up": done["iceprod_up"],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", type=int, default=1000)
    parser.add_argument("--cycles", type=int, default=3, help="steady polls to measure")
    parser.add_argument("--rate-limits", default="0,50", help="comma list; 0 = unlimited")
    args = parser.parse_args()
    workdir = ROOT / ".cache" / "bench"
    workdir.mkdir(parents=True, exist_ok=True)
    sim_port = free_port()
    simulator = [
        sys.executable,
        "-m",
        "iceprod_exporter.simulator",
        "--datasets",
        str(args.datasets),
        "--port",
        str(sim_port),
        "--tick",
        "0",
    ]
    api_url = f"http://127.0.0.1:{sim_port}"
    print(f"simulated IceProd: {args.datasets} datasets, {os.cpu_count()} cores", flush=True)
    with process(simulator, workdir / "simulator.log"):
        wait(lambda: get(api_url + "/healthz")[1] == b"{}", 300, "simulator")
        for rate in (float(r) for r in args.rate_limits.split(",")):
            label = "unlimited" if rate == 0 else f"{rate:g} rps"
            print(f"\n== rate limit {label}, concurrency 8", flush=True)
            for key, value in run_case(api_url, rate, args.cycles, workdir).items():
                print(
                    f"  {key:<34} {value:10.1f}"
                    if isinstance(value, float)
                    else f"  {key:<34} {value:10}"
                )


if __name__ == "__main__":
    main()
