"""Benchmark: the exporter beside IceProd's own dataset_monitor, on one simulated IceProd.

For each size the simulated IceProd runs the quiet/busy model (``--busy-share``: a fifth of the
processing datasets move, the others sit quiet until they wake up; see
``iceprod_simulator/model.py``), in its own process, and counts the requests and the
CPU seconds it spends answering each client (``GET /_simulator/requests``).

1. World paused. IceProd's ``dataset_monitor`` (iceprod 3.2.43, unmodified, from the pinned venv
   the tests build) makes one full refresh while its own ``/metrics`` is scraped serially.
2. Same paused world. The exporter starts (compatibility mode on) and makes its first poll, a
   full refresh; its compatibility series must equal dataset_monitor's, series for series.
3. World moving. Steady cycles follow the first four (by then every unchanged dataset is
   quiet): five of them, one quiet interval, are measured: requests, IceProd CPU and duration
   per cycle, the exporter's own CPU (its polling process: per cycle and per API request),
   scrape latency, memory. dataset_monitor's CPU is that of its whole run.

dataset_monitor is stateless (a cron: every run reads everything), so its full refresh is also
its steady cycle. The exporter keeps the ratios of its default intervals (poll 60 s, quiet
datasets every 300 s, task_stats at most every 600 s) on a shorter clock (:data:`POLL` per
size) and the world ticks five times per poll, so a run takes minutes, not hours; ratios are
per cycle and do not depend on the clock.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import (
    EXPORTER,
    ROOT,
    count_series,
    free_port,
    get,
    p99,
    poll_events,
    proc_status,
    process,
    wait,
)

sys.path.insert(0, str(ROOT))
from tests.support.real_iceprod.harness import DATASET_MONITOR_MAIN
from tests.support.real_iceprod.venv import DEFAULT_VENV_DIR, ensure_venv

CLIENT, SECRET = "bench-monitor", "bench-secret-0xFEED"
#: the poll interval per size: long enough for a steady cycle (the defaults' 60 s would make a
#: run take hours); quiet datasets are read every 5 polls, task_stats at most every 10
POLL = {100: 5.0, 1000: 5.0, 10000: 30.0}
QUIET_POLLS, STATS_POLLS, TICKS_PER_POLL = 5, 10, 5
#: cycles before the steady ones: the first, then three unchanged reads make a dataset quiet
WARM_UP = 4
BUSY_SHARE = 0.2
SCRAPE_EVERY = 0.5
COMPAT = ("iceprod_jobs", "iceprod_tasks", "iceprod_future_resources_hours")
URL_LINE = re.compile(rb"^(issuer|iceprod): (\S+)$", re.MULTILINE)


@dataclass
class Refresh:
    """What one client cost per refresh, and what it gave."""

    requests: float = 0.0
    iceprod_cpu: float = 0.0  # seconds the simulated IceProd spent answering
    wall: float = 0.0
    scrapes: list[float] = field(default_factory=list)
    series: int = 0
    rss_mib: float = 0.0
    client_cpu: float = 0.0  # seconds of CPU the client itself spent (the exporter: its poller)

    def cpu_per_request_ms(self) -> float:
        return 1000 * self.client_cpu / self.requests if self.requests else float("nan")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of one process so far (its children not included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ledger(api: str) -> tuple[int, float]:
    """(requests, CPU seconds) the simulated IceProd has answered on its API routes so far."""
    body = json.loads(get(api + "/_simulator/requests")[1])
    api_routes = [t for t in body["requests"] if not t.startswith(("/_simulator", "/healthz"))]
    return (
        sum(body["requests"][t] for t in api_routes),
        sum(body["cpu_seconds"].get(t, 0.0) for t in api_routes),
    )


def pause(api: str, paused: bool) -> None:
    request = urllib.request.Request(
        api + "/_simulator/paused", data=b"true" if paused else b"false", method="PUT"
    )
    urllib.request.urlopen(request, timeout=30).read()


def series(
    text: str, names: tuple[str, ...]
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name in names
    }


class Scraper(threading.Thread):
    """Scrapes a URL every :data:`SCRAPE_EVERY` seconds until stopped, keeping each latency.

    Not back to back: dataset_monitor renders its whole registry per scrape, and at 10,000
    datasets continuous scraping would slow its refresh down by minutes.
    """

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.last = url, b""
        self.latencies: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                elapsed, self.last = get(self.url)
                self.latencies.append(elapsed)
            except OSError:
                pass  # not listening yet, or already gone
            self.stop.wait(SCRAPE_EVERY)


def dataset_monitor(api: str, issuer: str, workdir: Path) -> tuple[Refresh, str]:
    """One unmodified dataset_monitor run: its cost, and the registry it printed at the end."""
    python = ensure_venv(DEFAULT_VENV_DIR)
    port = free_port()
    env = {**os.environ, "OAUTH_CLIENT_SECRET": SECRET}
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PROMETHEUS_PORT"):
        env.pop(name, None)
    argv = [str(python), str(DATASET_MONITOR_MAIN), "--rest-url", api, "--oauth-url", issuer,
            "--oauth-client-id", CLIENT, "--prometheus-port", str(port)]  # fmt: skip
    scraper = Scraper(f"http://127.0.0.1:{port}/metrics")
    requests0, cpu0 = ledger(api)
    started = time.monotonic()
    with (workdir / "dataset_monitor.err").open("wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, env=env)
    scraper.start()
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    scraper.stop.set()
    scraper.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"dataset_monitor failed: {(workdir / 'dataset_monitor.err').read_text()}")
    requests1, cpu1 = ledger(api)
    text = out.decode()
    return Refresh(requests1 - requests0, cpu1 - cpu0, wall, scraper.latencies,
                   count_series(text), usage.ru_maxrss / 1024,
                   usage.ru_utime + usage.ru_stime), text  # fmt: skip


def exporter(api: str, issuer: str, workdir: Path, poll: float) -> tuple[Refresh, Refresh, str]:
    """The exporter's first poll on the paused world, then its steady cycles on the moving one."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    log = workdir / "exporter.log"
    env = {**os.environ, "API_URL": api, "OAUTH_URL": issuer, "OAUTH_CLIENT_ID": CLIENT,
           "OAUTH_CLIENT_SECRET": SECRET}  # fmt: skip
    argv = [*EXPORTER, "run", "--port", str(port), "--listen-address", "127.0.0.1",
            "--poll-interval", str(poll), "--quiet-poll-interval", str(QUIET_POLLS * poll),
            "--task-stats-interval", str(STATS_POLLS * poll), "--rate-limit", "0",
            "--compat-dataset-monitor", "--log-format", "json"]  # fmt: skip
    requests0, cpu0 = ledger(api)
    with process(argv, log, env=env) as proc:
        scraper = Scraper(url)
        scraper.start()
        first = wait(lambda: poll_events(log), 900, "the exporter's first poll")[0]
        requests1, cpu1 = ledger(api)
        _, body = get(url)
        compat = body.decode()
        full = Refresh(requests1 - requests0, cpu1 - cpu0, first["duration"],
                       list(scraper.latencies), count_series(compat))  # fmt: skip
        pause(api, False)
        wait(lambda: len(poll_events(log)) >= WARM_UP, 1800, "warm-up cycles")
        requests1, cpu1 = ledger(api)
        own1 = cpu_seconds(proc.pid)
        scraper.latencies.clear()
        steady_cycles = QUIET_POLLS
        wait(lambda: len(poll_events(log)) >= WARM_UP + steady_cycles, 1800, "steady cycles")
        requests2, cpu2 = ledger(api)
        own2 = cpu_seconds(proc.pid)
        cycles = poll_events(log)[WARM_UP : WARM_UP + steady_cycles]
        scraper.stop.set()
        scraper.join()
        steady = Refresh(
            (requests2 - requests1) / steady_cycles,
            (cpu2 - cpu1) / steady_cycles,
            statistics.mean(c["duration"] for c in cycles),
            scraper.latencies,
            count_series(get(url)[1].decode()),
            proc_status(proc.pid, "VmHWM") / 1024,
            (own2 - own1) / steady_cycles,
        )
        full.rss_mib = steady.rss_mib
    return full, steady, compat


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs else "-"


def run(datasets: int, workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    poll = POLL.get(datasets, 30.0)
    sim_port = free_port()
    simulator = [sys.executable, "-m", "iceprod_simulator", "--datasets", str(datasets),
                 "--port", str(sim_port), "--tick", str(poll / TICKS_PER_POLL),
                 "--busy-share", str(BUSY_SHARE),
                 "--client-id", CLIENT, "--client-secret", SECRET,
                 "--token-ttl", "600"]  # fmt: skip
    sim_log = workdir / "simulator.log"
    print(f"\n== {datasets:,} datasets ({os.cpu_count()} cores, {BUSY_SHARE:.0%} busy)", flush=True)
    with process(simulator, sim_log):
        urls = wait(
            lambda: (
                (found := dict(URL_LINE.findall(sim_log.read_bytes()))).keys()
                >= {b"issuer", b"iceprod"}
                and found
            ),
            600,
            "simulator",
        )
        issuer, api = urls[b"issuer"].decode(), urls[b"iceprod"].decode()
        wait(lambda: get(api + "/healthz")[1] == b"{}", 600, "simulator API")
        pause(api, True)
        monitor, monitor_text = dataset_monitor(api, issuer, workdir)
        full, steady, compat = exporter(api, issuer, workdir, poll)
    theirs, ours = series(monitor_text, COMPAT), series(compat, COMPAT)
    mismatched = {k for k in theirs.keys() | ours.keys() if theirs.get(k) != ours.get(k)}
    rows = [
        ("API requests per full refresh", monitor.requests, full.requests, "{:,.0f}"),
        ("API requests per steady cycle", monitor.requests, steady.requests, "{:,.0f}"),
        ("IceProd CPU per full refresh (s)", monitor.iceprod_cpu, full.iceprod_cpu, "{:.2f}"),
        ("IceProd CPU per steady cycle (s)", monitor.iceprod_cpu, steady.iceprod_cpu, "{:.2f}"),
        ("wall time per full refresh (s)", monitor.wall, full.wall, "{:.1f}"),
        ("wall time per steady cycle (s)", monitor.wall, steady.wall, "{:.1f}"),
        ("scrape p99 while refreshing (ms)", p99(monitor.scrapes) * 1000,
         p99(steady.scrapes) * 1000, "{:.1f}"),
        ("client CPU per steady cycle (s)", monitor.client_cpu, steady.client_cpu, "{:.2f}"),
        ("client CPU per API request (ms)", monitor.cpu_per_request_ms(),
         steady.cpu_per_request_ms(), "{:.2f}"),
        ("series", monitor.series, steady.series, "{:,}"),
        ("peak resident memory (MiB)", monitor.rss_mib, steady.rss_mib, "{:.0f}"),
    ]  # fmt: skip
    print(f"  {'per refresh':36} {'dataset_monitor':>16} {'exporter':>12} {'ratio':>8}")
    for name, theirs_value, ours_value, fmt in rows:
        print(f"  {name:36} {fmt.format(theirs_value):>16} {fmt.format(ours_value):>12} "
              f"{ratio(ours_value, theirs_value):>8}")  # fmt: skip
    print(
        f"  compatibility series: {len(theirs):,} from dataset_monitor, "
        f"{'identical' if not mismatched else f'{len(mismatched)} DIFFER'} in the exporter"
    )
    if mismatched:
        raise SystemExit(f"compatibility series differ: {sorted(mismatched)[:5]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", default="100,1000,10000", help="comma list")
    args = parser.parse_args()
    started = time.monotonic()
    for n in (int(x) for x in args.datasets.split(",")):
        run(n, ROOT / ".cache" / "bench" / f"side-by-side-{n}")
    print(f"\n(took {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
