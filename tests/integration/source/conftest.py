"""Fixtures both tiers of these tests use, from the support package."""

from tests.support.auth import issuer  # noqa: F401
from tests.support.hostile import log_stream  # noqa: F401
from tests.support.scripted_http import server  # noqa: F401
