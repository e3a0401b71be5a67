"""The sharded deployment as processes: 3 shards x 2 replicas on 10,000 simulated datasets.

``python benchmarks/scale_out.py`` (``make scale-out``): one simulated IceProd (frozen, so that
every value holds still), six ``iceprod-exporter run --shard i --total-shards 3`` processes and
one unsharded exporter, a real Prometheus with the shipped rules scraping the six. Prints the
time to the first complete poll and the memory of every process, the series per shard and their
union, and what each check found (``tests/support/scale_out.py``); exits 1 if a check fails.
``tests/integration/test_scale_out.py`` runs the same at 1,000 datasets.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import ROOT, member_status

sys.path.insert(0, str(ROOT))
from tests.support.scale_out import (
    Exporter,
    Finding,
    Plan,
    check_replica_kill,
    check_shard_kill,
    check_union,
    deploy,
)


def _mib(pid: int) -> str:
    """Resident memory of a process tree (the exporter's poller and serving process apart)."""
    parts = [kb / 1024 for kb in member_status(pid, "VmRSS")]
    return f"{sum(parts):.0f} MiB ({' + '.join(f'{p:.0f}' for p in parts)})"


def _row(exporter: Exporter) -> str:
    first = exporter.first_poll()
    assert exporter.proc is not None  # deploy() started it
    pid = exporter.proc.pid
    return (
        f"  {exporter.name:<22} {exporter.ready_after or 0:>7.1f} s {first['duration']:>7.1f} s "
        f"{first['requests']:>9,} {first['datasets']:>8,}   {_mib(pid)}"
    )


def main() -> None:
    """Run it, print the figures and the findings."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", type=int, default=10_000)
    parser.add_argument("--poll-interval", type=float, default=60.0)
    parser.add_argument("--scrape-interval", type=float, default=5.0, help="also rule evaluation")
    args = parser.parse_args()
    plan = Plan(
        datasets=args.datasets,
        poll_interval=args.poll_interval,
        scrape_interval=args.scrape_interval,
        ready_timeout=600.0,
        settle_timeout=180.0,
    )
    workdir = ROOT / ".cache" / "bench" / f"scale-out-{args.datasets}"
    # a TSDB left by an earlier run would bring its targets' series back for 5 minutes
    shutil.rmtree(workdir, ignore_errors=True)
    started = time.monotonic()
    print(f"== {args.datasets:,} datasets (frozen world), {plan.shards} shards x "
          f"{len(plan.replicas)} replicas + 1 unsharded exporter, {os.cpu_count()} cores; poll "
          f"every {plan.poll_interval:g} s, rate limit off; Prometheus scrapes and evaluates "
          f"every {plan.scrape_interval:g} s; logs in {workdir}", flush=True)  # fmt: skip
    findings: list[Finding] = []
    with deploy(plan, workdir) as dep:
        print(f"  {'process':<22} {'ready':>9} {'1st poll':>9} {'requests':>9} {'datasets':>8}"
              "   resident memory (poller + serving)")  # fmt: skip
        for exporter in [dep.reference, *dep.replicas]:
            print(_row(exporter))
        print(f"  {'prometheus':<22} {'':>9} {'':>9} {'':>9} {'':>8}   "
              f"{_mib(dep.prometheus.proc.pid)}")  # fmt: skip
        print(f"  {'simulated IceProd':<22} {'':>9} {'':>9} {'':>9} {'':>8}   "
              f"{_mib(dep.simulator.pid)}", flush=True)  # fmt: skip
        for check in (check_union, check_replica_kill, check_shard_kill):
            findings.append(check(dep))
            print(findings[-1].report(), flush=True)
    print(f"  run time {time.monotonic() - started:.0f} s")
    if not all(f.ok for f in findings):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
