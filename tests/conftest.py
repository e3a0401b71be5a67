"""The two test tiers, by folder, and the fixtures every test shares.

* ``tests/unit/`` (``make check``): fast (the whole of ``make check`` under 30 s on two cores, so
  no test over about a second), no root, no Debian packages, no IceProd venv, no network beyond
  PyPI.
* ``tests/integration/``: every test that needs a Debian tool (prometheus, promtool,
  alertmanager, amtool, openssl, chromium, docker-compose, kubectl, systemd-analyze), the real
  IceProd server, or takes more than about a second. ``make test`` runs both.

Both are laid out like the package (``source/``, ``poll/``, ``exposition/``, ``serving/``,
``http/``, ``daemon/``, plus ``simulator/``, ``mixin/`` and ``deploy/``); what tests share lives in
``tests/support/``. The unit tier is checked, not trusted: while a unit test runs, the helpers that
reach for a Debian tool, apt or the real IceProd fail it
(:func:`tests.support.debian.refuse_in_unit_tier`).
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import pytest
from prometheus_client import disable_created_metrics

from tests.support import debian

# the CLI disables *_created series; tests see the exposition the CLI serves
disable_created_metrics()  # type: ignore[no-untyped-call]

INTEGRATION = Path(__file__).resolve().parent / "integration"


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the integration folder's tests, so ``-m "not integration"`` still selects by tier."""
    for item in items:
        if _integration(item):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    """Refuse Debian tools and the real IceProd to the unit tier's tests (set-up included)."""
    debian.unit_test = None if _integration(item) else item.nodeid
    try:
        return (yield)
    finally:
        debian.unit_test = None


def _integration(item: pytest.Item) -> bool:
    """Whether a test is of the integration tier: its folder says (a marker does not)."""
    return item.path.resolve().is_relative_to(INTEGRATION)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
