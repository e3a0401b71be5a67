"""The API client as its tests build it, and the route they script."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry

from iceprod_exporter.exposition.telemetry import Telemetry
from iceprod_exporter.source import client as api
from iceprod_exporter.source.auth import StaticTokenGrant, TokenManager
from iceprod_exporter.source.client import ApiClient

ROUTE = "/datasets/d1/job_counts/status"


def client(
    url: str,
    registry: CollectorRegistry,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    **kw: float,
) -> ApiClient:
    telemetry = Telemetry(registry)
    tokens = TokenManager(StaticTokenGrant("tok"), telemetry, min_interval=0)
    options: dict[str, float] = {
        "timeout": 2.0,
        "retries": 2,
        "backoff_max": 30.0,
        "concurrency": 4,
        "rate_limit": 0.0,
        **kw,
    }
    return ApiClient(
        url,
        tokens,
        telemetry,
        timeout=options["timeout"],
        retries=int(options["retries"]),
        backoff_max=options["backoff_max"],
        concurrency=int(options["concurrency"]),
        rate_limit=options["rate_limit"],
        sleep=sleep,
    )


class Sleeps:
    """Records backoff sleeps instead of sleeping them."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def failures(registry: CollectorRegistry, reason: str, endpoint: str = api.JOB_COUNTS) -> float:
    value = registry.get_sample_value(
        "iceprod_exporter_api_request_failures_total", {"endpoint": endpoint, "reason": reason}
    )
    return value or 0.0


def get(c: ApiClient) -> object:
    async def run() -> object:
        try:
            return await c.get(api.JOB_COUNTS, dataset_id="d1")
        finally:
            c.close()

    return asyncio.run(run())
