"""The web configuration file: exporter-toolkit's schema, one-line errors without secrets."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from iceprod_exporter.http import web_config
from iceprod_exporter.http.web_config import WebConfigError
from tests.support.http import Pki
from tests.support.web_config import HASH, write


def error(path: Path) -> str:
    with pytest.raises(WebConfigError) as caught:
        web_config.load(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert HASH not in message and "secret-password" not in message
    return message


#: (file text, what the one-line error must name); ids by the expectation, since the texts
#: hold a freshly salted bcrypt hash (workers of pytest-xdist must collect the same ids)
BAD_FILES = [
    ("nonsense: 1\n", "nonsense: unknown key"),
    ("tls_server_config:\n  cert_fil: x\n", "tls_server_config.cert_fil: unknown key"),
    (f"basic_auth_users:\n  bob: 'x{HASH[1:]}'\n", "basic_auth_users.bob: not a bcrypt hash"),
    ("basic_auth_users:\n  bob: plain-secret-password-1\n", "basic_auth_users.bob"),
    ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n", "X-Frame-Options"),
    ("http_server_config:\n  headers:\n    Set-Cookie: a\n", "can not be configured"),
    ("tls_server_config:\n  key_file: k\n", "missing one of cert or cert_file"),
    (
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "  client_auth_type: Sometimes\n",
        "invalid ClientAuth: Sometimes",
    ),
    (
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "  client_ca_file: ca.crt\n",
        "without a Client Auth Policy",
    ),
    (
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "  client_auth_type: RequireAnyClientCert\n  client_ca_file: ca.crt\n",
        "not possible with Python",
    ),
    (
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "  min_version: TLS9\n",
        "unknown TLS version: TLS9",
    ),
    (
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "  cipher_suites: [TLS_FANCY]\n",
        "unknown cipher: TLS_FANCY",
    ),
    ("tls_server_config:\n  cert_file: nope.crt\n  key_file: server.key\n", "cannot load"),
    ("rate_limit:\n  interval: 1s\n", "rate_limit: not supported"),
    (f"basic_auth_users: [{HASH}\n", "not valid YAML"),
]


def test_a_full_file_loads_with_paths_relative_to_it(pki: Pki) -> None:
    path = write(
        pki.directory,
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
        "  min_version: TLS13\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,"
        " TLS_AES_128_GCM_SHA256]\n  curve_preferences: [CurveP256]\n"
        "http_server_config:\n  http2: true\n  headers:\n    X-Content-Type-Options: nosniff\n"
        f"    Strict-Transport-Security: max-age=31536000\nbasic_auth_users:\n  alice: '{HASH}'\n",
    )
    config = web_config.load(path)
    assert config.tls is not None and config.tls.cert_file == pki.directory / "server.crt"
    assert config.tls.min_version is ssl.TLSVersion.TLSv1_3
    context = config.tls.context()
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert config.headers["X-Content-Type-Options"] == "nosniff"
    assert set(config.users) == {"alice"}
    assert HASH not in repr(config)


def test_inline_cert_and_key(pki: Pki, tmp_path: Path) -> None:
    cert = pki.server_cert.read_text().replace("\n", "\n    ")
    key = pki.server_key.read_text().replace("\n", "\n    ")
    path = write(tmp_path, f"tls_server_config:\n  cert: |\n    {cert}\n  key: |\n    {key}\n")
    config = web_config.load(path)
    assert config.tls is not None and config.tls.context() is not None


@pytest.mark.parametrize(("text", "names"), BAD_FILES, ids=[names for _, names in BAD_FILES])
def test_bad_files_are_one_line_naming_the_key(
    pki: Pki, tmp_path: Path, text: str, names: str
) -> None:
    (tmp_path / "server.crt").write_bytes(pki.server_cert.read_bytes())
    (tmp_path / "server.key").write_bytes(pki.server_key.read_bytes())
    (tmp_path / "ca.crt").write_bytes(pki.ca.read_bytes())
    assert names in error(write(tmp_path, text))


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
