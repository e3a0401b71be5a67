"""The API client against a real local HTTP server: retries, Retry-After, 401, timeouts, limits."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry

from iceprod_exporter.source import client as api
from iceprod_exporter.source.client import ApiError
from iceprod_exporter.source.labels import Reason
from tests.support.client import ROUTE, Sleeps, client, failures, get
from tests.support.exporter import wait_for
from tests.support.scripted_http import Reply, ScriptedServer, threads_outside_servers


def test_rate_limit_bounds_real_request_rate(server: ScriptedServer) -> None:
    server.script[ROUTE] = [Reply(200, {})]
    c = client(server.url, CollectorRegistry(), rate_limit=10.0)

    async def run() -> float:
        started = time.monotonic()
        try:
            await asyncio.gather(*(c.get(api.JOB_COUNTS, dataset_id="d1") for _ in range(25)))
        finally:
            c.close()
        return time.monotonic() - started

    elapsed = asyncio.run(run())
    assert elapsed >= 1.4, f"25 requests at 10 rps (burst 10) took {elapsed:.2f}s"


def test_hang_past_the_timeout_fails_in_bounded_time(server: ScriptedServer) -> None:
    server.script[ROUTE] = [Reply(200, {}, delay=5.0)]
    registry = CollectorRegistry()
    started = time.monotonic()
    with pytest.raises(ApiError) as err:
        get(client(server.url, registry, Sleeps(), timeout=0.5, retries=1))
    assert err.value.reason == "timeout"
    assert time.monotonic() - started < 1.5, "a timeout is not retried"
    assert failures(registry, "timeout") == 1


def test_concurrency_cap_is_respected(server: ScriptedServer) -> None:
    for i in range(12):
        server.script[f"/datasets/d{i}/job_counts/status"] = [Reply(200, {}, delay=0.15)]
    c = client(server.url, CollectorRegistry(), concurrency=3)

    async def run() -> None:
        try:
            await asyncio.gather(*(c.get(api.JOB_COUNTS, dataset_id=f"d{i}") for i in range(12)))
        finally:
            c.close()

    asyncio.run(run())
    assert server.max_in_flight == 3


def test_a_hang_ends_at_the_timeout_and_frees_its_slot(server: ScriptedServer) -> None:
    """A hung call closes its socket at the timeout; queued calls then fail at the deadline.

    So a hang never piles up sockets, and no queued request waits out a timeout.
    """
    server.script[ROUTE] = [Reply(200, {}, stall=True)]
    c = client(server.url, CollectorRegistry(), Sleeps(), timeout=0.2, concurrency=2)
    threads = threads_outside_servers()

    async def run() -> tuple[list[object], float]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 0.5
        started = loop.time()
        calls = [c.get(api.JOB_COUNTS, deadline=deadline, dataset_id="d1") for _ in range(10)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        return results, loop.time() - started

    try:
        results, took = asyncio.run(run())
    finally:
        c.close()
    reasons = [r.reason for r in results if isinstance(r, ApiError)]
    assert len(reasons) == 10
    assert set(reasons) == {"timeout", "deadline"}
    assert reasons.count(Reason.DEADLINE) >= 2, "queued past the deadline: failed, never sent"
    assert len(server.seen) <= 2 * 3, "two slots, each free again after a 0.2 s timeout"
    assert took < 1.2
    wait_for(lambda: server.in_flight == 0, 2, "the server to see every socket closed")
    assert threads_outside_servers() == threads, "no thread is left waiting on the server"


class CountingGrant:
    """Hands out tok-1, tok-2, ...; from the grant numbered ``slow_from`` on, takes 5 s."""

    def __init__(self, slow_from: int = 0) -> None:
        self.count = 0
        self._slow_from = slow_from

    async def fetch(self) -> tuple[str, float | None]:
        self.count += 1
        if self._slow_from and self.count >= self._slow_from:
            await asyncio.sleep(5)
        return f"tok-{self.count}", None


def test_a_late_401_for_an_old_token_keeps_the_token_granted_since(
    server: ScriptedServer,
) -> None:
    """Two calls sent with tok-1 both get 401; the later one must not drop tok-2 again."""
    server.script[ROUTE] = [
        Reply(401, {"code": 401}),
        Reply(401, {"code": 401}, delay=0.3),  # back after tok-2 was granted
        Reply(200, {"idle": 1}),
        Reply(200, {"idle": 1}),
    ]
    grant = CountingGrant()
    c = client(server.url, CollectorRegistry(), grant=grant, retries=0, backoff_max=1)

    async def run() -> list[object]:
        try:
            calls = (c.get(api.JOB_COUNTS, dataset_id="d1") for _ in range(2))
            return list(await asyncio.gather(*calls))
        finally:
            c.close()

    assert asyncio.run(run()) == [{"idle": 1}, {"idle": 1}]
    assert grant.count == 2, "one grant after the first 401, none after the late one"
    assert [s.authorization for s in server.seen[2:]] == ["Bearer tok-2"] * 2


def test_the_new_token_after_a_401_is_waited_for_only_until_the_deadline(
    server: ScriptedServer,
) -> None:
    server.script[ROUTE] = [Reply(401, {"code": 401})]
    c = client(
        server.url, CollectorRegistry(), grant=CountingGrant(slow_from=2), retries=0, backoff_max=1
    )

    async def run() -> tuple[ApiError, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            with pytest.raises(ApiError) as err:
                await c.get(api.JOB_COUNTS, deadline=started + 0.5, dataset_id="d1")
        finally:
            c.close()
        return err.value, loop.time() - started

    error, took = asyncio.run(run())
    assert error.reason == "deadline" and took < 1.5, (error, took)
