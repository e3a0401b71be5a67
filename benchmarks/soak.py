"""Soak: the exporter polls a moving simulated IceProd of 1,000 datasets for 10 minutes.

The simulation finishes datasets and submits new ones as it goes. Prints resident memory of
both processes (the poller and the serving child) over time (flat within 10 % after warm-up is
the target) and checks that no series of a finished
dataset outlives the grace period.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from bench import EXPORTER, ROOT, free_port, get, poll_events, proc_status, process, wait
from prometheus_client.parser import text_string_to_metric_families


def finished_series(body: bytes) -> set[str]:
    """Datasets exposed with status complete."""
    complete: set[str] = set()
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if (
                sample.name == "iceprod_dataset_status"
                and sample.value == 1
                and sample.labels["status"] == "complete"
            ):
                complete.add(sample.labels["dataset"])
    return complete


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--grace-period", type=float, default=60.0)
    parser.add_argument("--poll-interval", type=float, default=5.0)
    parser.add_argument("--tick", type=float, default=1.0, help="seconds per simulation step")
    args = parser.parse_args()
    workdir = ROOT / ".cache" / "soak"
    workdir.mkdir(parents=True, exist_ok=True)
    sim_port, port = free_port(), free_port()
    api_url, url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{port}/metrics"
    simulator = [
        sys.executable, "-m", "iceprod_simulator",
        "--datasets", str(args.datasets), "--port", str(sim_port), "--tick", str(args.tick),
    ]  # fmt: skip
    exporter = [
        *EXPORTER, "run", "--api-url", api_url, "--token", "soak", "--port", str(port),
        "--listen-address", "127.0.0.1", "--poll-interval", str(args.poll_interval),
        "--rate-limit", "0", "--grace-period", str(args.grace_period), "--log-format", "json",
    ]  # fmt: skip
    print(f"soak: {args.datasets} datasets, {args.minutes:g} min, grace {args.grace_period:g}s")
    log = workdir / "exporter.log"
    with process(simulator, workdir / "simulator.log"):
        wait(lambda: get(api_url + "/healthz")[1] == b"{}", 300, "simulator")
        with process(exporter, log) as proc:
            wait(lambda: poll_events(log), 600, "first poll")
            started = time.monotonic()
            first_complete: dict[str, float] = {}
            samples: list[tuple[float, float]] = []
            outlived: set[str] = set()
            # a dataset may be seen complete up to one poll late, and dropped one poll late
            allowed = args.grace_period + 2 * args.poll_interval + 10
            while (elapsed := time.monotonic() - started) < args.minutes * 60:
                complete = finished_series(get(url)[1])
                rss = proc_status(proc.pid, "VmRSS") / 1024  # both processes
                now = time.monotonic()
                for number in complete:
                    first_complete.setdefault(number, now)
                    if now - first_complete[number] > allowed:
                        outlived.add(number)
                samples.append((elapsed, rss))
                time.sleep(5)
    polls = poll_events(log)
    warm = [rss for t, rss in samples if t >= 120]
    print(f"  polls                         {len(polls)}")
    print(f"  failed polls                  {sum(not e['up'] for e in polls)}")
    print(f"  datasets seen finishing       {len(first_complete)}")
    print(f"  finished, outlived grace      {len(outlived)}")
    for minute in range(0, int(args.minutes) + 1, 2):
        near = [rss for t, rss in samples if minute * 60 <= t < minute * 60 + 30]
        if near:
            print(f"  RSS at {minute:>2} min (MiB)            {statistics.mean(near):6.1f}")
    if warm:
        spread = (max(warm) - min(warm)) / min(warm) * 100
        print(f"  RSS after warm-up min/max     {min(warm):.1f} / {max(warm):.1f} MiB")
        print(f"  RSS spread after warm-up      {spread:.1f} % (target <= 10 %)")
    if outlived or not first_complete:
        raise SystemExit("soak: FAILED (finished datasets outlived the grace period, or none)")


if __name__ == "__main__":
    main()
