"""Fixtures both tiers of these tests use, from the support package."""

from tests.support.deploy_files import dockerfile  # noqa: F401
