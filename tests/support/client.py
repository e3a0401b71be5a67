"""The API client as its tests build it, and the route they script."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry

from iceprod_exporter.exposition.telemetry import Telemetry
from iceprod_exporter.source import client as api
from iceprod_exporter.source.auth import Grant, StaticTokenGrant, TokenManager
from iceprod_exporter.source.client import ApiClient

ROUTE = "/datasets/d1/job_counts/status"


def client(
    url: str,
    registry: CollectorRegistry,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    grant: Grant | None = None,
    **options: Any,
) -> ApiClient:
    """The API client as the tests make it: the static token ``tok`` unless ``grant`` is given."""
    telemetry = Telemetry(registry)
    tokens = TokenManager(grant or StaticTokenGrant("tok"), telemetry, min_interval=0)
    settings: dict[str, Any] = {
        "timeout": 2.0,
        "retries": 2,
        "backoff_max": 30.0,
        "concurrency": 4,
        "rate_limit": 0.0,
        **options,
    }
    return ApiClient(url, tokens, telemetry, sleep=sleep, **settings)


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
