"""Fixtures of the HTTP integration tests: an exporter polled once, certificates by openssl."""

import pytest

from tests.support.http import Pki, make_pki
from tests.support.polled_http import polled  # noqa: F401


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server and a client certificate, made by the real openssl (once per module)."""
    return make_pki(tmp_path_factory.mktemp("pki"))
