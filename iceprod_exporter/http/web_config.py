"""exporter-toolkit web configuration (``--web.config.file``): TLS, basic auth, response headers.

The schema and its checks follow prometheus/exporter-toolkit's ``docs/web-configuration.md`` and
``web/tls_config.go`` wherever Python's ``ssl`` module can express them; what it cannot is a
clear error instead of a silently different behaviour. Errors are one line naming the file and
the key, and never contain a password, a hash or a private key.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import ssl
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import structlog
import yaml

log = structlog.get_logger(__name__)

#: exporter-toolkit's allowed extra headers, and the values allowed for the enumerated ones
EXTRA_HEADERS: Mapping[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}
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
_TLS_KEYS = frozenset(
    {
        "cert",
        "key",
        "client_ca",
        "cert_file",
        "key_file",
        "client_auth_type",
        "client_ca_file",
        "client_allowed_sans",
        "min_version",
        "max_version",
        "cipher_suites",
        "prefer_server_cipher_suites",
        "curve_preferences",
    }
)
_BCRYPT = re.compile(rb"^\$2[abxy]?\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
#: exporter-toolkit's hash of "fakepassword": unknown users cost a bcrypt check too (no timing
#: oracle for which user names exist)
_FAKE_HASH = b"$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi"
#: successful checks remembered (bcrypt costs ~50-100 ms at cost 10); as exporter-toolkit's cache
AUTH_CACHE_SIZE = 100
#: failed checks remembered: a client that keeps sending one wrong password (a scraper with a
#: stale one, a fleet of them) costs one check, not one a request
FAILED_CACHE_SIZE = 1000
#: how often the files are checked for a change (cert-manager rotations, edits)
RELOAD_SECONDS = 1.0


class WebConfigError(ValueError):
    """The web configuration file is unusable; the message is one line naming file and key."""


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


@dataclass(frozen=True)
class WebConfig:
    """One parsed web configuration file."""

    path: Path | None = None
    tls: TlsConfig | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    users: Mapping[str, bytes] = field(default_factory=dict, repr=False)

    def files(self) -> tuple[Path, ...]:
        """Every file this configuration was read from."""
        own = (self.path,) if self.path else ()
        return own + (self.tls.files() if self.tls else ())


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


def load(path: Path | str) -> WebConfig:
    """Parse and check a web configuration file, including that its TLS files load."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WebConfigError(f"{path}: cannot read: {_reason(exc)}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        # the YAML error would quote the offending text, which may be a hash or a key
        raise WebConfigError(f"{path}: not valid YAML{where}") from None
    config = parse(document, path)
    if config.tls is not None:
        try:
            config.tls.context()
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise WebConfigError(
                f"{path}: tls_server_config: cannot load the certificate, key or CA: {_reason(exc)}"
            ) from None
    return config


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}" + (f": {exc.filename}" if exc.filename else "")
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def parse(document: Any, path: Path) -> WebConfig:
    """Check a loaded YAML document (``None`` = empty file: no TLS, no auth)."""

    def fail(key: str, problem: str) -> WebConfigError:
        return WebConfigError(f"{path}: {key}: {problem}")

    if document is None:
        return WebConfig(path=path)
    if not isinstance(document, dict):
        raise WebConfigError(f"{path}: expected a mapping at the top level")
    allowed = {"tls_server_config", "http_server_config", "basic_auth_users", "rate_limit"}
    for key in document:
        if key not in allowed:
            raise fail(str(key), "unknown key")
    if document.get("rate_limit") is not None:
        raise fail("rate_limit", "not supported by iceprod-exporter (scrapes are a byte copy)")
    tls = _tls(document.get("tls_server_config"), path, fail)
    headers = _headers(document.get("http_server_config"), fail)
    users = _users(document.get("basic_auth_users"), fail)
    return WebConfig(path=path, tls=tls, headers=headers, users=users)


def _mapping(value: Any, key: str, fail: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise fail(key, "expected a mapping")
    return value


def _string(value: Any, key: str, fail: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise fail(key, "expected a string")
    return value


def _strings(value: Any, key: str, fail: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise fail(key, "expected a list of strings")
    return tuple(value)


def _tls(value: Any, path: Path, fail: Any) -> TlsConfig | None:
    raw = _mapping(value, "tls_server_config", fail)
    for key in raw:
        if key not in _TLS_KEYS:
            raise fail(f"tls_server_config.{key}", "unknown key")
    s = {k: _string(raw.get(k), f"tls_server_config.{k}", fail) for k in raw if k in (
        "cert", "key", "client_ca", "cert_file", "key_file", "client_auth_type", "client_ca_file",
        "min_version", "max_version")}  # fmt: skip
    if not any(s.get(k) for k in ("cert", "key", "cert_file", "key_file", "client_ca",
                                  "client_ca_file", "client_auth_type")):  # fmt: skip
        return None  # exporter-toolkit: no TLS settings means plain HTTP

    def resolve(key: str) -> Path | None:
        name = s.get(key)
        return None if name is None else (path.parent / name)

    for a, b in (("cert", "cert_file"), ("key", "key_file"), ("client_ca", "client_ca_file")):
        if s.get(a) and s.get(b):
            raise fail(f"tls_server_config.{a}", f"give {a} or {b}, not both")
    if not (s.get("cert") or s.get("cert_file")):
        raise fail("tls_server_config", "missing one of cert or cert_file")
    if not (s.get("key") or s.get("key_file")):
        raise fail("tls_server_config", "missing one of key or key_file")
    auth = s.get("client_auth_type") or "NoClientCert"
    if auth in UNVERIFIED_CLIENT_AUTH:
        raise fail(
            "tls_server_config.client_auth_type",
            f"{auth} (a client certificate that is not verified) is not possible with Python's "
            "ssl module; use VerifyClientCertIfGiven or RequireAndVerifyClientCert",
        )
    if auth not in CLIENT_AUTH_TYPES:
        raise fail("tls_server_config.client_auth_type", f"invalid ClientAuth: {auth}")
    has_ca = bool(s.get("client_ca") or s.get("client_ca_file"))
    if has_ca and auth == "NoClientCert":
        raise fail(
            "tls_server_config.client_auth_type",
            "client CA's have been configured without a Client Auth Policy",
        )
    if not has_ca and auth != "NoClientCert":
        raise fail("tls_server_config.client_ca_file", f"{auth} needs client_ca_file or client_ca")
    versions = {}
    for key, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        name = s.get(key) or default
        if name not in TLS_VERSIONS:
            raise fail(f"tls_server_config.{key}", f"unknown TLS version: {name}")
        versions[key] = TLS_VERSIONS[name]
    if versions["min_version"] > versions["max_version"]:
        raise fail("tls_server_config.min_version", "is above max_version")
    ciphers = []
    for name in _strings(raw.get("cipher_suites"), "tls_server_config.cipher_suites", fail):
        if name in TLS13_SUITES:
            continue
        if name not in CIPHER_SUITES:
            raise fail("tls_server_config.cipher_suites", f"unknown cipher: {name}")
        ciphers.append(CIPHER_SUITES[name])
    curves = _strings(raw.get("curve_preferences"), "tls_server_config.curve_preferences", fail)
    for name in curves:
        if name not in CURVES:
            raise fail("tls_server_config.curve_preferences", f"unknown curve: {name}")
    if len(curves) > 1:
        raise fail(
            "tls_server_config.curve_preferences",
            "Python's ssl module sets one curve: give one",
        )
    prefer = raw.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise fail("tls_server_config.prefer_server_cipher_suites", "expected true or false")
    return TlsConfig(
        cert_file=resolve("cert_file"),
        key_file=resolve("key_file"),
        cert=s.get("cert"),
        key=s.get("key"),
        client_ca_file=resolve("client_ca_file"),
        client_ca=s.get("client_ca"),
        client_auth_type=auth,
        client_allowed_sans=_strings(
            raw.get("client_allowed_sans"), "tls_server_config.client_allowed_sans", fail
        ),
        min_version=versions["min_version"],
        max_version=versions["max_version"],
        cipher_suites=tuple(ciphers),
        prefer_server_cipher_suites=prefer,
        curve=CURVES[curves[0]] if curves else None,
    )


def _headers(value: Any, fail: Any) -> dict[str, str]:
    raw = _mapping(value, "http_server_config", fail)
    for key in raw:
        if key not in ("headers", "http2"):
            raise fail(f"http_server_config.{key}", "unknown key")
    if not isinstance(raw.get("http2", True), bool):
        raise fail("http_server_config.http2", "expected true or false")
    headers = _mapping(raw.get("headers"), "http_server_config.headers", fail)
    out: dict[str, str] = {}
    for name, header_value in headers.items():
        key = f"http_server_config.headers.{name}"
        if name not in EXTRA_HEADERS:
            raise fail(key, f"HTTP header {name!r} can not be configured")
        if not isinstance(header_value, str) or "\n" in header_value or "\r" in header_value:
            raise fail(key, "expected a one-line string")
        allowed = EXTRA_HEADERS[name]
        if allowed and header_value not in allowed:
            raise fail(key, f"invalid value, expected one of: {', '.join(allowed)}")
        if header_value:  # blank means unset
            out[name] = header_value
    return out


def _users(value: Any, fail: Any) -> dict[str, bytes]:
    raw = _mapping(value, "basic_auth_users", fail)
    users: dict[str, bytes] = {}
    for user, hashed in raw.items():
        key = f"basic_auth_users.{user}"
        if not isinstance(user, str) or not user or ":" in user:
            raise fail("basic_auth_users", "user names are non-empty strings without ':'")
        if not isinstance(hashed, str) or not _BCRYPT.match(hashed.encode()):
            raise fail(
                key, "not a bcrypt hash (make one with `htpasswd -nBC 10 '' | tr -d ':\\n'`)"
            )
        users[user] = hashed.encode()
    return users


class Authenticator:
    """Checks basic-auth credentials against bcrypt hashes, remembering the results.

    The cache key is a SHA-256 of user, hash and password (never the password itself), so a
    changed hash invalidates it; successes and failures are kept apart, each bounded. Checks are
    slow on purpose (bcrypt); the caller runs them off its event loop, one at a time like
    exporter-toolkit, so a flood of wrong passwords costs one core at most.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[bool, dict[bytes, None]] = {True: {}, False: {}}

    def known(self, users: Mapping[str, bytes], user: str, password: str) -> bool | None:
        """The result of an earlier check of these credentials, if remembered (no bcrypt)."""
        key = self._key(users, user, password)
        for ok, keys in self._known.items():
            if key in keys:
                return ok
        return None

    def check(self, users: Mapping[str, bytes], user: str, password: str) -> bool:
        """Whether ``user`` / ``password`` match (slow when not remembered)."""
        remembered = self.known(users, user, password)
        if remembered is not None:
            return remembered
        hashed = users.get(user)
        with self._lock:
            try:
                ok = bcrypt.checkpw(password.encode(), hashed or _FAKE_HASH)
            except ValueError:
                ok = False
        ok = ok and hashed is not None
        keys = self._known[ok]
        if len(keys) >= (AUTH_CACHE_SIZE if ok else FAILED_CACHE_SIZE):
            keys.pop(next(iter(keys)))  # oldest first
        keys[self._key(users, user, password)] = None
        return ok

    @staticmethod
    def _key(users: Mapping[str, bytes], user: str, password: str) -> bytes:
        hashed = users.get(user, _FAKE_HASH)
        return hashlib.sha256(b"\0".join((user.encode(), hashed, password.encode()))).digest()


class LiveWebConfig:
    """The web configuration in force, reloaded when the file or its TLS files change.

    ``refresh`` (called every :data:`RELOAD_SECONDS` by the server) compares modification times
    and sizes; a changed set is loaded into a fresh SSLContext, so a certificate rotated by
    cert-manager takes effect for new connections without a restart. A broken reload keeps the
    last good configuration and logs one line. Turning TLS on or off needs a restart.
    """

    def __init__(self, config: WebConfig) -> None:
        self.config = config
        self.context = config.tls.context() if config.tls else None
        self._stamp = _stamp(config.files())

    @classmethod
    def from_file(cls, path: Path | str | None) -> LiveWebConfig:
        """From a file, or the no-TLS, no-auth default for ``None``."""
        return cls(load(path) if path is not None else WebConfig())

    def refresh(self) -> bool:
        """Reload if a file changed; True when the configuration or context was replaced."""
        stamp = _stamp(self.config.files())
        if stamp == self._stamp or self.config.path is None:
            return False
        try:
            config = load(self.config.path)
            if (config.tls is None) != (self.config.tls is None):
                raise WebConfigError(
                    f"{self.config.path}: tls_server_config: turning TLS on or off needs a restart"
                )
            context = config.tls.context() if config.tls else None
        except WebConfigError as exc:
            if stamp != getattr(self, "_failed", None):
                log.error("web_config.reload_failed", error=str(exc))
                self._failed = stamp
            return False
        self.config, self.context, self._stamp = config, context, _stamp(config.files())
        log.info("web_config.reloaded", path=str(config.path), tls=context is not None)
        return True


def _stamp(files: tuple[Path, ...]) -> tuple[tuple[int, int, int], ...]:
    out = []
    for path in files:
        try:
            st = path.stat()  # follows symlinks: Kubernetes swaps a ..data symlink
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append((0, 0, 0))
    return tuple(out)
