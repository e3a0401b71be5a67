"""TLS of the web configuration: ``tls_server_config`` checked, its SSL context, client names.

The keys and their checks follow exporter-toolkit's ``web/tls_config.go`` wherever Python's
``ssl`` module can express them; what it cannot (unverified client certificates, several curves)
is a clear error instead of a silently different behaviour.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iceprod_exporter.http.config_values import Fail, boolean, mapping, string, strings

TLS_VERSIONS: Mapping[str, ssl.TLSVersion] = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
#: Go's crypto/tls names (``tls.CipherSuites()``) -> OpenSSL names (TLS 1.2 and older)
CIPHER_SUITES: Mapping[str, str] = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
}
#: TLS 1.3 suites are not configurable in Go either: accepted and ignored, as there
TLS13_SUITES = frozenset(
    {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
)
CURVES: Mapping[str, str] = {
    "CurveP256": "prime256v1",
    "CurveP384": "secp384r1",
    "CurveP521": "secp521r1",
    "X25519": "X25519",
}
CLIENT_AUTH_TYPES: Mapping[str, ssl.VerifyMode] = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
#: Go asks for a client certificate without verifying it; OpenSSL through Python cannot
UNVERIFIED_CLIENT_AUTH = frozenset(
    {"RequestClientCert", "RequireAnyClientCert", "RequireClientCert"}
)
#: the keys whose value is one string
_STRING_KEYS = ("cert", "key", "client_ca", "cert_file", "key_file", "client_auth_type",
                "client_ca_file", "min_version", "max_version")  # fmt: skip
#: every key tls_server_config may have
_TLS_KEYS = frozenset(
    {*_STRING_KEYS, "client_allowed_sans", "cipher_suites", "prefer_server_cipher_suites",
     "curve_preferences"}
)  # fmt: skip
#: any of these set turns TLS on (exporter-toolkit: none of them means plain HTTP)
_TLS_ON_KEYS = ("cert", "key", "cert_file", "key_file", "client_ca", "client_ca_file",
                "client_auth_type")  # fmt: skip
#: each PEM given inline or as a file, never both
_PEM_SOURCES = (("cert", "cert_file"), ("key", "key_file"), ("client_ca", "client_ca_file"))
#: the version keys and their defaults
_VERSION_DEFAULTS = (("min_version", "TLS12"), ("max_version", "TLS13"))


@dataclass(frozen=True)
class TlsConfig:
    """``tls_server_config``, with paths resolved against the web config file's directory."""

    cert_file: Path | None = None
    key_file: Path | None = None
    cert: str | None = None
    key: str | None = field(default=None, repr=False)
    client_ca_file: Path | None = None
    client_ca: str | None = None
    client_auth_type: str = "NoClientCert"
    client_allowed_sans: tuple[str, ...] = ()
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    cipher_suites: tuple[str, ...] = ()  # OpenSSL names
    prefer_server_cipher_suites: bool = True
    curve: str | None = None

    def files(self) -> tuple[Path, ...]:
        """The files the context is built from (watched for rotation)."""
        return tuple(p for p in (self.cert_file, self.key_file, self.client_ca_file) if p)

    def context(self) -> ssl.SSLContext:
        """A fresh server SSLContext from the current files (raises ssl.SSLError, OSError)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = self.min_version
        ctx.maximum_version = self.max_version
        if self.cipher_suites:
            ctx.set_ciphers(":".join(self.cipher_suites))
        if self.prefer_server_cipher_suites:
            ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        if self.curve:
            ctx.set_ecdh_curve(self.curve)
        with (
            _pem_path(self.cert_file, self.cert) as cert,
            _pem_path(self.key_file, self.key) as key,
        ):
            ctx.load_cert_chain(cert, key)
        ctx.verify_mode = CLIENT_AUTH_TYPES[self.client_auth_type]
        if self.client_ca_file is not None:
            ctx.load_verify_locations(cafile=str(self.client_ca_file))
        elif self.client_ca is not None:
            ctx.load_verify_locations(cadata=self.client_ca)
        return ctx

    def allowed_peer(self, peer: Mapping[str, Any] | None) -> bool:
        """Whether a verified client certificate has one of ``client_allowed_sans``."""
        if not self.client_allowed_sans:
            return True
        if not peer:
            return False
        sans = {str(value) for _, value in peer.get("subjectAltName", ())}
        return bool(sans & set(self.client_allowed_sans))


@contextlib.contextmanager
def _pem_path(path: Path | None, inline: str | None) -> Iterator[str]:
    """A path for load_cert_chain: the file, or inline PEM in an anonymous memory file."""
    if path is not None:
        yield str(path)
        return
    assert inline is not None
    fd = os.memfd_create("iceprod-exporter-pem", os.MFD_CLOEXEC)  # never on disk
    try:
        os.write(fd, inline.encode())
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def parse_tls(value: Any, path: Path, fail: Fail) -> TlsConfig | None:
    """Check ``tls_server_config``; ``None`` when it sets no certificate, key or client auth."""
    raw = mapping(value, "tls_server_config", fail)
    for key in raw:
        if key not in _TLS_KEYS:
            raise fail(f"tls_server_config.{key}", "unknown key")
    given = {k: string(raw[k], f"tls_server_config.{k}", fail) for k in raw if k in _STRING_KEYS}
    if not any(given.get(k) for k in _TLS_ON_KEYS):
        return None
    _check_pem_sources(given, fail)
    auth = _client_auth(given, fail)
    min_version, max_version = _versions(given, fail)
    ciphers = _cipher_suites(raw.get("cipher_suites"), fail)
    curve = _curve(raw.get("curve_preferences"), fail)
    prefer = boolean(
        raw.get("prefer_server_cipher_suites", True),
        "tls_server_config.prefer_server_cipher_suites",
        fail,
    )
    return TlsConfig(
        cert_file=_resolve(path, given.get("cert_file")),
        key_file=_resolve(path, given.get("key_file")),
        cert=given.get("cert"),
        key=given.get("key"),
        client_ca_file=_resolve(path, given.get("client_ca_file")),
        client_ca=given.get("client_ca"),
        client_auth_type=auth,
        client_allowed_sans=strings(
            raw.get("client_allowed_sans"), "tls_server_config.client_allowed_sans", fail
        ),
        min_version=min_version,
        max_version=max_version,
        cipher_suites=ciphers,
        prefer_server_cipher_suites=prefer,
        curve=curve,
    )


def _resolve(path: Path, name: str | None) -> Path | None:
    """A file named in the web config file, relative to its directory."""
    return None if name is None else (path.parent / name)


def _check_pem_sources(given: Mapping[str, str | None], fail: Fail) -> None:
    """Each PEM inline or as a file, not both; a certificate and a key."""
    for inline, file in _PEM_SOURCES:
        if given.get(inline) and given.get(file):
            raise fail(f"tls_server_config.{inline}", f"give {inline} or {file}, not both")
    if not (given.get("cert") or given.get("cert_file")):
        raise fail("tls_server_config", "missing one of cert or cert_file")
    if not (given.get("key") or given.get("key_file")):
        raise fail("tls_server_config", "missing one of key or key_file")


def _client_auth(given: Mapping[str, str | None], fail: Fail) -> str:
    """The client auth type: one Python can verify, with a client CA exactly when it needs one."""
    auth = given.get("client_auth_type") or "NoClientCert"
    if auth in UNVERIFIED_CLIENT_AUTH:
        raise fail(
            "tls_server_config.client_auth_type",
            f"{auth} (a client certificate that is not verified) is not possible with Python's "
            "ssl module; use VerifyClientCertIfGiven or RequireAndVerifyClientCert",
        )
    if auth not in CLIENT_AUTH_TYPES:
        raise fail("tls_server_config.client_auth_type", f"invalid ClientAuth: {auth}")
    has_ca = bool(given.get("client_ca") or given.get("client_ca_file"))
    if has_ca and auth == "NoClientCert":
        raise fail(
            "tls_server_config.client_auth_type",
            "client CA's have been configured without a Client Auth Policy",
        )
    if not has_ca and auth != "NoClientCert":
        raise fail("tls_server_config.client_ca_file", f"{auth} needs client_ca_file or client_ca")
    return auth


def _versions(given: Mapping[str, str | None], fail: Fail) -> tuple[ssl.TLSVersion, ssl.TLSVersion]:
    """The minimum and maximum TLS versions, the minimum not above the maximum."""
    versions = []
    for key, default in _VERSION_DEFAULTS:
        name = given.get(key) or default
        if name not in TLS_VERSIONS:
            raise fail(f"tls_server_config.{key}", f"unknown TLS version: {name}")
        versions.append(TLS_VERSIONS[name])
    minimum, maximum = versions
    if minimum > maximum:
        raise fail("tls_server_config.min_version", "is above max_version")
    return minimum, maximum


def _cipher_suites(value: Any, fail: Fail) -> tuple[str, ...]:
    """The OpenSSL names of Go's cipher suite names (TLS 1.3 ones skipped)."""
    ciphers = []
    for name in strings(value, "tls_server_config.cipher_suites", fail):
        if name in TLS13_SUITES:
            continue
        if name not in CIPHER_SUITES:
            raise fail("tls_server_config.cipher_suites", f"unknown cipher: {name}")
        ciphers.append(CIPHER_SUITES[name])
    return tuple(ciphers)


def _curve(value: Any, fail: Fail) -> str | None:
    """The OpenSSL name of the one curve in ``curve_preferences``, if any."""
    curves = strings(value, "tls_server_config.curve_preferences", fail)
    for name in curves:
        if name not in CURVES:
            raise fail("tls_server_config.curve_preferences", f"unknown curve: {name}")
    if len(curves) > 1:
        raise fail(
            "tls_server_config.curve_preferences",
            "Python's ssl module sets one curve: give one",
        )
    return CURVES[curves[0]] if curves else None
