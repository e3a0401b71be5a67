"""The web configuration file (``--web.config.file``): read, checked, and reloaded on change.

The schema follows prometheus/exporter-toolkit's ``docs/web-configuration.md``: TLS
(:mod:`.tls`), basic-auth users (bcrypt hashes, checked at request time by :mod:`.logins`) and
response headers. Errors are one line naming the file and the key, and never contain a
password, a hash or a private key.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import yaml

from iceprod_exporter.http.config_values import Fail, boolean, mapping
from iceprod_exporter.http.tls import TlsConfig, parse_tls

log = structlog.get_logger(__name__)

#: exporter-toolkit's allowed extra headers, and the values allowed for the enumerated ones
EXTRA_HEADERS: Mapping[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}
_BCRYPT = re.compile(rb"^\$2[abxy]?\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
#: how often the files are checked for a change (cert-manager rotations, edits)
RELOAD_SECONDS = 1.0


class WebConfigError(ValueError):
    """The web configuration file is unusable; the message is one line naming file and key."""


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
    tls = parse_tls(document.get("tls_server_config"), path, fail)
    headers = _headers(document.get("http_server_config"), fail)
    users = _users(document.get("basic_auth_users"), fail)
    return WebConfig(path=path, tls=tls, headers=headers, users=users)


def _headers(value: Any, fail: Fail) -> dict[str, str]:
    raw = mapping(value, "http_server_config", fail)
    for key in raw:
        if key not in ("headers", "http2"):
            raise fail(f"http_server_config.{key}", "unknown key")
    boolean(raw.get("http2", True), "http_server_config.http2", fail)
    headers = mapping(raw.get("headers"), "http_server_config.headers", fail)
    for name, header_value in headers.items():
        _check_header(name, header_value, fail)
    return {name: text for name, text in headers.items() if text}  # blank means unset


def _check_header(name: str, value: Any, fail: Fail) -> None:
    """One of exporter-toolkit's extra headers, a one-line string, an allowed value."""
    key = f"http_server_config.headers.{name}"
    if name not in EXTRA_HEADERS:
        raise fail(key, f"HTTP header {name!r} can not be configured")
    if not isinstance(value, str) or "\n" in value or "\r" in value:
        raise fail(key, "expected a one-line string")
    allowed = EXTRA_HEADERS[name]
    if allowed and value not in allowed:
        raise fail(key, f"invalid value, expected one of: {', '.join(allowed)}")


def _users(value: Any, fail: Fail) -> dict[str, bytes]:
    raw = mapping(value, "basic_auth_users", fail)
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
