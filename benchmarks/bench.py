"""Helpers of the benchmarks (processes, scrapes, /proc), and the defaults benchmark.

``python benchmarks/bench.py`` (``make bench-defaults``): see :data:`DEFAULTS_DOC`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from iceprod_exporter import config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the test helpers, for scripts run from anywhere
from tests.support.exporter import free_port as free_port  # noqa: E402 (needs the path; re-exported)

EXPORTER = [sys.executable, "-m", "iceprod_exporter"]


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
    return sum(member_status(pid, key))


def poll_events(log: Path) -> list[dict[str, float]]:
    events = []
    for line in log.read_text().splitlines():
        if '"poll.finished"' in line:
            events.append(json.loads(line))
    return events


def member_status(pid: int, key: str, file: str = "status") -> list[int]:
    """A field of /proc/PID/``file`` for each process of the tree (kB for memory fields)."""
    found = []
    for member in process_tree(pid):
        for line in Path(f"/proc/{member}/{file}").read_text().splitlines():
            if line.startswith(key + ":"):
                found.append(int(line.split()[1]))
    return found


def distinct_resident_mib(pid: int) -> float | None:
    """Physical memory the process tree holds, each page once (None unless root may read it).

    Summed RSS counts a page both interpreters map twice; PSS splits a shared page with every
    process that maps it, the simulator's interpreter too. ``/proc/PID/pagemap`` gives each
    resident page's frame number (to root only): the distinct frames are what the tree costs.
    """
    frames: set[int] = set()
    page = os.sysconf("SC_PAGE_SIZE")
    for member in process_tree(pid):
        with open(f"/proc/{member}/pagemap", "rb") as pagemap:
            for line in Path(f"/proc/{member}/maps").read_text().splitlines():
                low, high = (int(x, 16) for x in line.split()[0].split("-"))
                if line.endswith("[vsyscall]"):
                    continue
                pagemap.seek(low // page * 8)
                entries = pagemap.read((high - low) // page * 8)
                for (entry,) in struct.iter_unpack("<Q", entries):
                    if entry >> 63:  # present
                        frames.add(entry & ((1 << 55) - 1))
    if frames == {0}:  # frame numbers read as 0 without CAP_SYS_ADMIN
        return None
    return len(frames) * page / 2**20


def main() -> None:
    """The exporter at its defaults on a moving simulated IceProd: every cycle, and memory."""
    parser = argparse.ArgumentParser(description=DEFAULTS_DOC)
    parser.add_argument("--datasets", type=int, default=10_000)
    parser.add_argument("--steady-cycles", type=int, default=3, help="cycles after warm-up")
    args = parser.parse_args()
    workdir = ROOT / ".cache" / "bench" / f"defaults-{args.datasets}"
    workdir.mkdir(parents=True, exist_ok=True)
    settings = config.validate({"api_url": "http://unused", "token": "t"})
    interval = settings.poll_interval
    sim_port, port = free_port(), free_port()
    simulator = [sys.executable, "-m", "iceprod_simulator", "--datasets",
                 str(args.datasets), "--port", str(sim_port), "--tick", str(interval / 5),
                 "--busy-share", "0.2"]  # fmt: skip
    api_url = f"http://127.0.0.1:{sim_port}"
    print(f"== {args.datasets:,} datasets, {os.cpu_count()} cores, defaults: poll_interval "
          f"{interval:g} s, rate_limit {settings.rate_limit:g}/s, concurrency "
          f"{settings.concurrency}, quiet_poll_interval {settings.quiet_poll_interval:g} s",
          flush=True)  # fmt: skip
    warm_up = 1 + settings.quiet_after_polls  # by then every unchanged dataset is quiet
    with process(simulator, workdir / "simulator.log"):
        wait(lambda: get(api_url + "/healthz")[1] == b"{}", 600, "simulator")
        log = workdir / "exporter.log"
        argv = [*EXPORTER, "run", "--api-url", api_url, "--token", "bench", "--port", str(port),
                "--listen-address", "127.0.0.1", "--log-format", "json"]  # fmt: skip
        with process(argv, log) as proc:
            cycles = warm_up + args.steady_cycles
            deadline = (cycles + 10) * interval * 3
            wait(lambda: len(poll_events(log)) >= cycles, deadline, f"{cycles} poll cycles")
            rss = [kb / 1024 for kb in member_status(proc.pid, "VmRSS")]
            hwm = [kb / 1024 for kb in member_status(proc.pid, "VmHWM")]
            # RSS counts the libraries both interpreters map twice; PSS splits shared pages
            pss = sum(member_status(proc.pid, "Pss", "smaps_rollup")) / 1024
            distinct = distinct_resident_mib(proc.pid)
            _, body = get(f"http://127.0.0.1:{port}/metrics")
    events = poll_events(log)[:cycles]
    print(f"  {'cycle':>5} {'requests':>9} {'duration (s)':>13}")
    for e in events:
        phase = "full" if e["cycle"] == 1 else "warm-up" if e["cycle"] <= warm_up else "steady"
        print(f"  {e['cycle']:>5.0f} {e['requests']:>9,.0f} {e['duration']:>13.1f}  {phase}")
    steady = events[warm_up:]
    longest = max(e["duration"] for e in steady)
    print(f"  steady cycles: {statistics.mean(e['requests'] for e in steady):,.0f} requests, "
          f"longest {longest:.1f} s of the {interval:g} s poll interval: "
          f"{'within' if longest <= interval else 'OVER'}")  # fmt: skip
    print(f"  resident memory now: poller {rss[0]:.0f} MiB, serving process {rss[1]:.0f} MiB; "
          f"peaks {hwm[0]:.0f} and {hwm[1]:.0f} MiB; exposition {len(body) / 1e6:.1f} MB, "
          f"{count_series(body.decode()):,} series")  # fmt: skip
    print(f"  together: resident {sum(rss):.0f} MiB, proportional (shared pages split between "
          f"the processes) {pss:.0f} MiB")  # fmt: skip
    if distinct is None:
        print("  distinct resident pages: needs root (/proc/PID/pagemap)")
    else:
        print(f"  distinct resident pages (each physical page once, what the exporter costs the "
              f"machine): {distinct:.0f} MiB = {distinct * 2**20 / 1e6:.0f} MB")  # fmt: skip
    if longest > interval:
        raise SystemExit("a steady cycle overran the poll interval")


DEFAULTS_DOC = """Benchmark: the exporter at its default settings on a moving simulated IceProd.

The quiet/busy simulation (a fifth of the processing datasets busy) ticks five times per poll
interval. Prints each cycle's requests and duration (the first reads everything, the next few
until unchanged datasets turn quiet, then steady ones) and both processes' memory, and fails if
a steady cycle overruns the poll interval at the default rate limit.
"""


if __name__ == "__main__":
    main()
