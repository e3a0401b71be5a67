"""What the hostile-upstream tests share: the secret that must never leak, clients, log capture."""

from __future__ import annotations

import asyncio
import io
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry

from iceprod_exporter import logs
from iceprod_exporter.source.client import ApiClient
from iceprod_exporter.source.labels import Endpoint
from tests.support.client import client

SECRET = "hostile-test-secret-0xBAD5EED"


def api_client(url: str, registry: CollectorRegistry, **options: Any) -> ApiClient:
    """The client the hostile tests use: no retries, so each case is one call."""
    return client(url, registry, retries=0, backoff_max=1.0, **options)


def run_calls(c: ApiClient, calls: int = 1, route: str = "d1") -> list[Any]:
    """``calls`` GETs of one route at once; results or the ApiErrors."""

    async def run() -> list[Any]:
        try:
            return await asyncio.gather(
                *(c.get(Endpoint.JOB_COUNTS, dataset_id=route) for _ in range(calls)),
                return_exceptions=True,
            )
        finally:
            c.close()

    return asyncio.run(run())


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """The CLI's log set-up writing to a buffer; the test process's set-up is restored after."""
    root = logging.getLogger()
    handlers, level, showwarning = root.handlers[:], root.level, warnings.showwarning
    stream = io.StringIO()
    logs.configure("info", logs.LogFormat.JSON, stream)
    try:
        yield stream
    finally:
        root.handlers[:], warnings.showwarning = handlers, showwarning
        root.setLevel(level)
        structlog.reset_defaults()
