"""Each auth mode against a local OIDC issuer that signs real RS256 JWTs."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry

from iceprod_exporter.source.auth import (
    TokenError,
)
from iceprod_simulator import OIDCIssuer
from tests.support.auth import cc, manager


def test_expiry_driven_refresh(issuer: OIDCIssuer) -> None:
    issuer.token_ttl = 3
    tokens = manager(cc(issuer))

    async def run() -> list[str]:
        seen = []
        for _ in range(6):
            await tokens.ensure_fresh()
            seen.append(tokens.current())
            issuer.validate(seen[-1])  # valid (not expired) at the moment it is used
            await asyncio.sleep(0.5)
        return seen

    seen = asyncio.run(run())
    # refreshed half-way through each ~3 s lifetime (exp is whole seconds, so 1 or 2 refreshes)
    assert 2 <= len(set(seen)) <= 3
    assert issuer.token_requests["client_credentials"] == len(set(seen))


def test_issuer_failing_then_recovering(issuer: OIDCIssuer) -> None:
    issuer.fail_status = 503
    tokens = manager(cc(issuer))
    with pytest.raises(TokenError):
        asyncio.run(tokens.ensure_fresh())
    issuer.fail_status = None
    time.sleep(1.05)  # the first backoff step is 1 s
    asyncio.run(tokens.ensure_fresh())
    issuer.validate(tokens.current())


def test_failing_issuer_does_not_break_a_token_that_still_works(issuer: OIDCIssuer) -> None:
    issuer.token_ttl = 4
    registry = CollectorRegistry()
    tokens = manager(cc(issuer), registry)
    asyncio.run(tokens.ensure_fresh())
    first = tokens.current()
    issuer.fail_status = 503
    time.sleep(2.2)  # past the refresh margin (half the lifetime), not past expiry
    asyncio.run(tokens.ensure_fresh())  # does not raise
    assert tokens.current() == first
    assert (
        registry.get_sample_value(
            "iceprod_exporter_token_refresh_failures_total", {"reason": "rejected"}
        )
        == 1
    )
    issuer.fail_status = None
    time.sleep(1.0)  # the first backoff step
    asyncio.run(tokens.ensure_fresh())
    assert tokens.current() != first
