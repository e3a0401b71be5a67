"""Each auth mode against a local OIDC issuer that signs real RS256 JWTs."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from prometheus_client import CollectorRegistry

from iceprod_exporter.source.auth import (
    OpenIDProvider,
    RefreshTokenGrant,
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


def test_a_client_that_hangs_up_leaves_no_traceback(
    issuer: OIDCIssuer, capfd: pytest.CaptureFixture[str]
) -> None:
    issuer.delay = 0.2  # the reply is written after the client reset the connection
    url = urlsplit(issuer.url)
    body = b"grant_type=client_credentials"
    with socket.create_connection((url.hostname or "", url.port or 0), timeout=5) as client:
        client.sendall(
            f"POST {url.path}/protocol/openid-connect/token HTTP/1.0\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        time.sleep(0.05)  # the issuer has read the request
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    time.sleep(0.4)  # the delayed reply meets the reset
    issuer.delay = 0.0
    asyncio.run(manager(cc(issuer)).ensure_fresh())  # and it still serves
    assert issuer.token_requests["client_credentials"] == 2, "the reset request was answered"
    assert "Traceback" not in capfd.readouterr().err


def test_slow_issuer_times_out(issuer: OIDCIssuer) -> None:
    issuer.delay = 3.0
    started = time.monotonic()
    with pytest.raises(TokenError) as err:
        asyncio.run(manager(cc(issuer, timeout=0.5)).ensure_fresh())
    assert err.value.reason == "timeout"
    assert time.monotonic() - started < 2.5


def test_login_device_flow_writes_a_private_refresh_token(tmp_path: Path) -> None:
    with OIDCIssuer(auto_approve_devices=True, device_interval=0.1) as issuer:
        issuer.register_client("iceprod-public", None, {"groups": ["/institutions/IceCube"]})
        path = tmp_path / "token"
        env = {
            "PATH": os.environ["PATH"],
            "OAUTH_URL": issuer.url,
            "OAUTH_CLIENT_ID": "iceprod-public",
            "ICEPROD_EXPORTER_REFRESH_TOKEN_FILE": str(path),
        }
        result = subprocess.run(
            [sys.executable, "-m", "iceprod_exporter", "login"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert "enter the code" in result.stdout.lower() or "verification" in result.stdout.lower()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        grant = RefreshTokenGrant(OpenIDProvider(issuer.url, 5), "iceprod-public", path)
        tokens = manager(grant)
        asyncio.run(tokens.ensure_fresh())
        assert issuer.validate(tokens.current())["groups"] == ["/institutions/IceCube"]
