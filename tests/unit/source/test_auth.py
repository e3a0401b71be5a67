"""Each auth mode against a local OIDC issuer that signs real RS256 JWTs."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from iceprod_exporter.source.auth import (
    ClientCredentialsGrant,
    OpenIDProvider,
    RefreshTokenGrant,
    StaticTokenGrant,
    TokenError,
)
from iceprod_simulator import SYSTEM_ROLE_CLAIMS, OIDCIssuer
from tests.support.auth import SECRET, cc, manager


def test_client_credentials_token_is_a_valid_jwt(issuer: OIDCIssuer) -> None:
    registry = CollectorRegistry()
    tokens = manager(cc(issuer), registry)
    asyncio.run(tokens.ensure_fresh())
    claims = issuer.validate(tokens.current())
    assert claims["resource_access"] == SYSTEM_ROLE_CLAIMS["resource_access"]
    assert tokens.expires_at == claims["exp"]
    assert (
        registry.get_sample_value("iceprod_exporter_token_expiry_timestamp_seconds")
        == claims["exp"]
    )
    assert registry.get_sample_value("iceprod_exporter_token_refreshes_total") == 1


def test_wrong_secret_is_rejected_without_leaking_it_and_backs_off(issuer: OIDCIssuer) -> None:
    registry = CollectorRegistry()
    tokens = manager(cc(issuer, secret="wrong-secret-value"), registry)
    with pytest.raises(TokenError) as err:
        asyncio.run(tokens.ensure_fresh())
    assert err.value.reason == "rejected" and "invalid_client" in str(err.value)
    assert "wrong-secret-value" not in str(err.value)
    with pytest.raises(TokenError):
        asyncio.run(tokens.ensure_fresh())
    assert issuer.token_requests["client_credentials"] == 1, "backs off instead of hammering"
    assert (
        registry.get_sample_value(
            "iceprod_exporter_token_refresh_failures_total", {"reason": "rejected"}
        )
        == 1
    )


def test_issuer_unreachable() -> None:
    grant = ClientCredentialsGrant(OpenIDProvider("http://127.0.0.1:9/realms/x", 1), "c", str)
    with pytest.raises(TokenError) as err:
        asyncio.run(manager(grant).ensure_fresh())
    assert err.value.reason == "connection"


def test_refresh_token_file_rotates_atomically_with_mode_0600(
    issuer: OIDCIssuer, tmp_path: Path
) -> None:
    path = tmp_path / "refresh-token"
    first = issuer.issue_refresh_token("exporter")
    path.write_text(first + "\n")  # a trailing newline must not break it
    path.chmod(0o644)
    grant = RefreshTokenGrant(OpenIDProvider(issuer.url, 5), "exporter", path, lambda: SECRET)
    tokens = manager(grant)
    asyncio.run(tokens.ensure_fresh())
    issuer.validate(tokens.current())
    rotated = path.read_text()
    assert rotated and rotated != first and not rotated.endswith("\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["refresh-token"], "no temp files left"
    tokens.invalidate()
    asyncio.run(tokens.ensure_fresh())
    assert path.read_text() != rotated, "rotated again on the next refresh"


def test_missing_refresh_token_file_is_a_config_error(issuer: OIDCIssuer, tmp_path: Path) -> None:
    grant = RefreshTokenGrant(OpenIDProvider(issuer.url, 5), "exporter", tmp_path / "nope")
    with pytest.raises(TokenError) as err:
        asyncio.run(manager(grant).ensure_fresh())
    assert err.value.reason == "config"


def test_static_token_file_is_reread(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("one\n")
    tokens = manager(StaticTokenGrant(path=path))
    asyncio.run(tokens.ensure_fresh())
    assert tokens.current() == "one"
    path.write_text("two")
    tokens.invalidate()
    asyncio.run(tokens.ensure_fresh())
    assert tokens.current() == "two"


def test_current_never_blocks_and_fails_without_a_token() -> None:
    with pytest.raises(TokenError, match="no access token"):
        manager(StaticTokenGrant("x")).current()
