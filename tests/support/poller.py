"""A Poller over the fake source, as the poll tests make and run it."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry

from iceprod_exporter.exposition.telemetry import Telemetry
from iceprod_exporter.poll.poller import Poller
from iceprod_exporter.poll.schedule import Schedule
from tests.support.clock import FakeClock
from tests.support.source import FakeSource


def make(source: FakeSource, clock: FakeClock, **schedule: Any) -> Poller:
    options = {
        "poll_interval": 60.0,
        "slow_poll_factor": 5,
        "task_stats_interval": 600.0,
        "grace_period": 300.0,
        "quiet_after_polls": 0,  # the fake's counts never change; quiet reads tested apart
        **schedule,
    }
    return Poller(source, Schedule(**options), Telemetry(CollectorRegistry()), clock)


def poll(poller: Poller, full: bool = False) -> Any:
    return asyncio.run(poller.poll(full=full))
