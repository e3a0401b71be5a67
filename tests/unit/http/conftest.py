"""Fixtures both tiers of these tests use, from the support package."""

from tests.support.polled_http import polled  # noqa: F401
