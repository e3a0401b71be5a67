"""Shared fixtures: snapshots built from plain values, private registries."""

from __future__ import annotations

import pytest
from prometheus_client import disable_created_metrics

# the CLI disables *_created series; tests see the exposition the CLI serves
disable_created_metrics()  # type: ignore[no-untyped-call]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
