"""Shared fixtures, and the two test tiers.

* The **unit** tier, ``make check`` (``pytest -m "not integration"``): fast (the whole of
  ``make check`` under 30 s on two cores, so no test over about a second), no root, no Debian
  packages, no IceProd venv, no network beyond PyPI.
* The **integration** tier: every test that needs a Debian tool (prometheus, promtool,
  alertmanager, amtool, openssl, chromium, docker-compose, kubectl, systemd-analyze), the real
  IceProd server, or takes more than about a second. ``make test`` runs both tiers.

A test is integration when its module says ``pytestmark = pytest.mark.integration``, when it
is decorated ``@pytest.mark.integration``, or when it uses one of :data:`INTEGRATION_FIXTURES`.
The unit tier is checked, not trusted: while an unmarked test runs, the helpers that reach for a
Debian tool, apt or the real IceProd fail it (:func:`tests.debian.refuse_in_unit_tier`).
"""

from __future__ import annotations

from collections.abc import Generator

import pytest
from prometheus_client import disable_created_metrics

from . import debian

# the CLI disables *_created series; tests see the exposition the CLI serves
disable_created_metrics()  # type: ignore[no-untyped-call]

#: fixtures that make every test using them (directly or through another fixture) integration
INTEGRATION_FIXTURES: dict[str, str] = {
    "pki": "certificates made by the real openssl (tests/http_support.py make_pki)",
    "rendered": "kustomizations rendered by kubectl (tests/test_deploy.py)",
    "built_image": "the Dockerfile's build stage run on this machine, pip and all (~12 s)",
    "unit_root": "a root tree for systemd-analyze (tests/test_deploy.py)",
}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that use an integration fixture."""
    for item in items:
        if INTEGRATION_FIXTURES.keys() & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    """Refuse Debian tools and the real IceProd to the unit tier's tests (set-up included)."""
    debian.unit_test = None if item.get_closest_marker("integration") else item.nodeid
    try:
        return (yield)
    finally:
        debian.unit_test = None


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
