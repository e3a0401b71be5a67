"""The web configuration file: exporter-toolkit's schema, one-line errors without secrets."""

from __future__ import annotations

from pathlib import Path

from iceprod_exporter.http import web_config
from iceprod_exporter.http.logins import Authenticator
from tests.support.http import bcrypt_hash
from tests.support.web_config import HASH, write


def test_empty_file_means_no_tls_and_no_auth(tmp_path: Path) -> None:
    config = web_config.load(write(tmp_path, ""))
    assert config.tls is None and not config.users


def test_authenticator_remembers_successes_and_failures_per_hash() -> None:
    users = {"alice": HASH.encode()}
    auth = Authenticator()
    assert auth.known(users, "alice", "secret-password-1") is None
    assert auth.check(users, "alice", "secret-password-1")
    assert auth.known(users, "alice", "secret-password-1") is True
    assert auth.known(users, "alice", "wrong") is None
    assert not auth.check(users, "alice", "wrong")
    assert auth.known(users, "alice", "wrong") is False
    assert not auth.check(users, "mallory", "fakepassword"), "the timing hash is no login"
    assert auth.known(users, "mallory", "fakepassword") is False
    other = {"alice": bcrypt_hash("other").encode()}
    assert auth.known(other, "alice", "secret-password-1") is None, "a new hash, a new check"
    assert auth.known(other, "alice", "wrong") is None
