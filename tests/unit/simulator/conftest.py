"""Fixtures both tiers of these tests use, from the support package."""

from tests.support.simulator import issuer, world  # noqa: F401
