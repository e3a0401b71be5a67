"""Harness running the real IceProd REST server (pinned venv, mongomock, local OIDC issuer)."""
