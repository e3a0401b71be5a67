"""The poller when time runs out: a fan-out cut at the poll's deadline, a final read cut short."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from iceprod_exporter.poll.report import CycleReport
from iceprod_exporter.source import client as api
from tests.support.clock import FakeClock
from tests.support.poller import make, poll
from tests.support.source import FakeSource


def test_the_deadline_ends_a_hung_fan_out() -> None:
    class Hanging(FakeSource):
        async def get(self, template: str, *args: Any, **kw: Any) -> Any:
            if template == api.JOB_COUNTS and kw.get("dataset_id") == "b":
                await asyncio.sleep(30)
            return await super().get(template, *args, **kw)

    source, clock = Hanging(), FakeClock()
    source.add("a", 1)
    source.add("b", 2)
    poller = make(source, clock, poll_timeout=0.3)
    reports: list[CycleReport] = []
    poller.on_report = reports.append
    started = time.monotonic()
    snap = poll(poller)
    assert time.monotonic() - started < 2
    assert not snap.up, "a poll that passed its deadline failed"
    assert snap.datasets["a"].jobs == {"processing": 2}, "what was read in time is kept"
    assert reports[0].error is not None and "deadline" in reports[0].error


def test_a_completed_dataset_whose_final_read_is_cut_keeps_its_grace_period() -> None:
    class Hanging(FakeSource):
        hang = False

        async def get(self, template: str, *args: Any, **kw: Any) -> Any:
            if self.hang and template == api.JOB_COUNTS:
                await asyncio.sleep(30)
            return await super().get(template, *args, **kw)

    source, clock = Hanging(), FakeClock()
    source.add("a", 1)
    poller = make(source, clock, poll_timeout=0.3)
    poll(poller)
    source.datasets["a"]["status"] = "complete"
    source.hang = True
    clock.now += 60
    assert not poll(poller).up, "the final read passed the deadline"
    source.hang = False
    clock.now += 60
    snap = poll(poller)
    assert "a" in snap.datasets and not snap.datasets["a"].watched, "kept for the grace period"
    clock.now += 300
    assert "a" not in poll(poller).datasets
