"""An OIDC issuer that knows the exporter; token managers and grants as auth tests make them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from iceprod_exporter.exposition.telemetry import Telemetry
from iceprod_exporter.source.auth import (
    ClientCredentialsGrant,
    Grant,
    OpenIDProvider,
    TokenManager,
)
from iceprod_simulator import SYSTEM_ROLE_CLAIMS, OIDCIssuer

SECRET = "s3cret-value-never-logged"


@pytest.fixture
def issuer() -> Iterator[OIDCIssuer]:
    with OIDCIssuer(token_ttl=300) as i:
        i.register_client("exporter", SECRET, SYSTEM_ROLE_CLAIMS)
        yield i


def manager(grant: Grant, registry: CollectorRegistry | None = None) -> TokenManager:
    return TokenManager(grant, Telemetry(registry or CollectorRegistry()), min_interval=0)


def cc(issuer: OIDCIssuer, secret: str = SECRET, timeout: float = 5.0) -> ClientCredentialsGrant:
    return ClientCredentialsGrant(OpenIDProvider(issuer.url, timeout), "exporter", lambda: secret)
