"""The API client as its tests build it, and the route they script."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry

from iceprod_exporter.exposition.telemetry import Telemetry
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
