"""Web configuration files as the tests write them, and a bcrypt hash to put in them."""

from __future__ import annotations

from pathlib import Path

from tests.support.http import bcrypt_hash

HASH = bcrypt_hash("secret-password-1")


def write(directory: Path, text: str) -> Path:
    path = directory / "web-config.yml"
    path.write_text(text)
    return path
