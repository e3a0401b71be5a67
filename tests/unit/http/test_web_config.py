"""The web configuration file: exporter-toolkit's schema, one-line errors without secrets."""

from __future__ import annotations

import subprocess
import sys
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


def test_the_daemon_refuses_a_bad_web_config_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, f"basic_auth_users:\n  bob: 'x{HASH[1:]}'\n")
    done = subprocess.run(
        [sys.executable, "-m", "iceprod_exporter", "run", "--api-url", "http://127.0.0.1:9",
         "--token", "t", "--port", "0", "--listen-address", "127.0.0.1"],
        env={"PATH": "/usr/bin:/bin", "ICEPROD_EXPORTER_WEB_CONFIG_FILE": str(path)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "web_config_file" in done.stderr and "basic_auth_users.bob" in done.stderr
    assert HASH[8:] not in done.stderr + done.stdout
