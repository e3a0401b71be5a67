"""Benchmark: /metrics scraped like Prometheus while polls run back to back.

For each dataset count (simulated IceProd, separate processes): serial scrapes (OpenMetrics
Accept, gzip) during polls (median, p99, max); 50 concurrent scrapers for 15 s (throughput, p99,
errors); 1,000 idle connections held open (scrape p99, threads, RSS); 1,000 slow and 1,000 idle
connections kept open against the 1,000-connection cap (scrapes on new connections: median, p99,
max, failures).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import resource
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import EXPORTER, ROOT, free_port, get, p99, poll_events, proc_status, process, wait

from tests.support.http import Crowd

ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=underscores;q=0.5,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.1"
)
HEADERS = {"Accept": ACCEPT, "Accept-Encoding": "gzip", "User-Agent": "Prometheus/3"}


def scrape(conn: http.client.HTTPConnection) -> float:
    started = time.perf_counter()
    conn.request("GET", "/metrics", headers=HEADERS)
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        raise RuntimeError(f"status {response.status}")
    return time.perf_counter() - started


async def concurrent_scrapes(
    port: int, scrapers: int, seconds: float
) -> tuple[list[float], list[str]]:
    """``scrapers`` keep-alive clients scraping back to back for ``seconds``.

    Raw asyncio streams, not one thread each: with http.client and 50 threads the benchmark's
    own interpreter lock, not the exporter, would set the latencies on 2 cores.
    """
    request = (
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items())
        + "\r\n"
    ).encode()
    results: list[float] = []
    errors: list[str] = []
    stop = time.monotonic() + seconds

    async def scraper() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(head.split(b"\r\n")[0].decode())
            except (OSError, RuntimeError, asyncio.IncompleteReadError, IndexError) as exc:
                errors.append(repr(exc))  # counted, the run goes on
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            results.append(time.perf_counter() - started)
        writer.close()

    await asyncio.gather(*(scraper() for _ in range(scrapers)))
    return results, errors


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def run(datasets: int, seconds: float, workdir: Path) -> None:
    sim_port, port = free_port(), free_port()
    simulator = [sys.executable, "-m", "iceprod_simulator", "--datasets", str(datasets),
                 "--port", str(sim_port), "--tick", "0"]  # fmt: skip
    api_url = f"http://127.0.0.1:{sim_port}"
    print(f"\n== {datasets} datasets ({os.cpu_count()} cores)", flush=True)
    with process(simulator, workdir / f"sim-{datasets}.log"):
        wait(lambda: get(api_url + "/healthz")[1] == b"{}", 600, "simulator")
        log = workdir / f"exporter-{datasets}.log"
        argv = [*EXPORTER, "run", "--api-url", api_url, "--token", "bench", "--port", str(port),
                "--listen-address", "127.0.0.1", "--poll-interval", "1", "--rate-limit", "0",
                "--log-format", "json"]  # fmt: skip
        with process(argv, log) as proc:
            wait(lambda: poll_events(log), 900, "first poll")
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            scrape(conn)  # warm: the first snapshot's bytes
            size = len(get(f"http://127.0.0.1:{port}/metrics")[1])
            polls_before = len(poll_events(log))
            latencies = []
            # at least ``seconds``, and until a poll has finished (its swap included)
            started = time.monotonic()
            while time.monotonic() < started + seconds or (
                len(poll_events(log)) == polls_before and time.monotonic() < started + 600
            ):
                for _ in range(50):
                    latencies.append(scrape(conn))
                    time.sleep(0.01)
            polls = len(poll_events(log)) - polls_before
            print(f"  exposition {size / 1e6:.1f} MB; {polls} polls during "
                  f"{time.monotonic() - started:.0f} s of serial scrapes")  # fmt: skip
            print(f"  serial scrapes during polls: n={len(latencies)} median "
                  f"{ms(statistics.median(latencies))} p99 {ms(p99(latencies))} "
                  f"max {ms(max(latencies))}")  # fmt: skip

            # 50 concurrent scrapers, each on its own keep-alive connection
            results, errors = asyncio.run(concurrent_scrapes(port, 50, 15.0))
            print(f"  50 scrapers x 15 s: {len(results) / 15:.0f} scrapes/s p99 {ms(p99(results))} "
                  f"max {ms(max(results))} errors {len(errors)}")  # fmt: skip

            rss_before = proc_status(proc.pid, "VmRSS") / 1024
            idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(1000)]
            time.sleep(1)
            with_idle = [scrape(conn) for _ in range(200)]
            print(f"  1,000 idle connections: scrape p99 {ms(p99(with_idle))} "
                  f"(median {ms(statistics.median(with_idle))}), threads "
                  f"{proc_status(proc.pid, 'Threads')}, RSS {rss_before:.0f} -> "
                  f"{proc_status(proc.pid, 'VmRSS') / 1024:.0f} MiB, "
                  f"peak {proc_status(proc.pid, 'VmHWM') / 1024:.0f} MiB")  # fmt: skip
            for s in idle:
                s.close()

            # a crowd twice the connection cap: each new connection closes the longest-waiting
            with Crowd(port, slow=1000, idle=1000, seconds=120) as crowd:
                wait(lambda: crowd.opened >= 2000, 60, "2,000 crowd connections")
                time.sleep(1)
                crowded, failures = [], 0
                for _ in range(60):
                    fresh = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    try:
                        crowded.append(scrape(fresh))
                    except (OSError, RuntimeError):
                        failures += 1
                    finally:
                        fresh.close()
                    time.sleep(0.1)
            print(f"  1,000 slow + 1,000 idle connections: {len(crowded)}/60 scrapes on new "
                  f"connections, median {ms(statistics.median(crowded))} p99 {ms(p99(crowded))} "
                  f"max {ms(max(crowded))}, failures {failures}; the server closed "
                  f"{crowd.closed_by_server} crowd connections")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", default="1000,10000", help="comma list")
    parser.add_argument("--seconds", type=float, default=20, help="serial scraping time")
    args = parser.parse_args()
    workdir = ROOT / ".cache" / "bench"
    workdir.mkdir(parents=True, exist_ok=True)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # the crowd's 2,000 sockets
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    for n in (int(x) for x in args.datasets.split(",")):
        run(n, args.seconds, workdir)


if __name__ == "__main__":
    main()
