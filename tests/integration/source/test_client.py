"""The API client against a real local HTTP server: retries, Retry-After, 401, timeouts, limits."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry

from iceprod_exporter.source import client as api
from tests.support.client import ROUTE, client
from tests.support.scripted_http import Reply, ScriptedServer


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
