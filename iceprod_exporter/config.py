"""Settings: one model, four sources, one precedence order.

Flags beat environment variables, which beat the YAML file, which beats the defaults. IceProd's own
environment names (``API_URL``, ``OAUTH_URL``, ...) are accepted beside ``ICEPROD_EXPORTER_*``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import urllib.parse
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from iceprod_exporter.http import web_config
from iceprod_exporter.logs import LogFormat

ENV_PREFIX = "ICEPROD_EXPORTER_"

#: IceProd's own deployment variables, so the exporter drops into its environment unchanged.
ICEPROD_ENV_ALIASES: Mapping[str, str] = {
    "API_URL": "api_url",
    "OAUTH_URL": "oauth_url",
    "OAUTH_CLIENT_ID": "oauth_client_id",
    "OAUTH_CLIENT_SECRET": "oauth_client_secret",
    "PROMETHEUS_PORT": "port",
}

DEFAULT_PORT = 8097


class AuthMode(StrEnum):
    """How the exporter obtains bearer tokens for the IceProd API."""

    AUTO = "auto"
    CLIENT_CREDENTIALS = "client_credentials"
    REFRESH_TOKEN = "refresh_token"
    STATIC_TOKEN = "static_token"


class ConfigError(Exception):
    """A setting is missing or invalid; the message names the setting."""


class Settings(BaseModel):
    """Every setting of the exporter; field descriptions feed the generated reference."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)

    api_url: str = Field(
        "", description="Base URL of the IceProd REST API, e.g. https://api.iceprod.icecube.aq."
    )
    auth_mode: AuthMode = Field(
        AuthMode.AUTO,
        description="auto: client credentials if a secret is set, else a refresh-token file, "
        "else a static token.",
    )
    oauth_url: str = Field(
        "https://keycloak.icecube.wisc.edu/auth/realms/IceCube",
        description="OpenID Connect realm (issuer) URL; discovery is used to find the token "
        "endpoint.",
    )
    oauth_client_id: str = Field("iceprod", description="OAuth2 client id.")
    oauth_client_secret: SecretStr | None = Field(
        None,
        description="OAuth2 client secret for the client-credentials grant (prefer the "
        "environment or the file: flags show in the process list).",
    )
    oauth_client_secret_file: Path | None = Field(
        None, description="File holding the client secret (e.g. a mounted Kubernetes Secret)."
    )
    refresh_token_file: Path | None = Field(
        None,
        description="Refresh token file written by `iceprod-exporter login`; rewritten "
        "atomically on rotation.",
    )
    token: SecretStr | None = Field(None, description="Static bearer token (testing only).")
    token_file: Path | None = Field(
        None, description="File holding a static bearer token; re-read on every refresh."
    )
    token_timeout: float = Field(
        10.0,
        gt=0,
        le=300,
        allow_inf_nan=False,
        description="Seconds allowed for one token or discovery request.",
    )
    listen_address: str = Field(
        "0.0.0.0",
        description="Address the HTTP server binds to: an IPv4 or IPv6 address (`::` for dual "
        "stack, brackets allowed) or a host name.",
    )
    web_config_file: Path | None = Field(
        None,
        description="exporter-toolkit web configuration file: TLS (`tls_server_config`), basic "
        "auth (`basic_auth_users`, bcrypt) and response headers; paths in it are relative to it.",
    )
    port: int = Field(
        DEFAULT_PORT, ge=0, le=65535, description="Port of /metrics, /healthz, /readyz and /."
    )
    poll_interval: float = Field(
        60.0,
        ge=1,
        le=86400,
        allow_inf_nan=False,
        description="Seconds between poll cycles of processing datasets.",
    )
    slow_poll_factor: int = Field(
        5,
        ge=1,
        le=1000,
        description="Suspended and errors datasets are counted every this many cycles.",
    )
    task_stats_interval: float = Field(
        600.0,
        ge=0,
        le=7 * 86400,
        allow_inf_nan=False,
        description=(
            "Seconds between task_stats fetches of a dataset, made only when its completed task"
            " count changed since the last fetch (0: never)."
        ),
    )
    quiet_after_polls: int = Field(
        3,
        ge=0,
        le=1000,
        description=(
            "A processing dataset whose counts were unchanged this many reads in a row is quiet"
            " and read every quiet_poll_interval only, until they change (0: never quiet)."
        ),
    )
    quiet_poll_interval: float = Field(
        300.0,
        ge=0,
        le=86400,
        allow_inf_nan=False,
        description=(
            "Seconds between reads of a quiet dataset: the longest a change of its counts waits"
            " to be seen (status and metadata changes are seen every cycle)."
        ),
    )
    timeout: float = Field(
        30.0,
        gt=0,
        le=600,
        allow_inf_nan=False,
        description="Per-call timeout in seconds for IceProd API requests; a call that has not "
        "answered by then fails at once (timeouts are not retried).",
    )
    poll_timeout: float = Field(
        300.0,
        gt=0,
        le=86400,
        allow_inf_nan=False,
        description="Seconds one poll cycle may take, retries included; what is still "
        "outstanding then is abandoned and the poll counts as failed.",
    )
    retries: int = Field(
        2,
        ge=0,
        le=10,
        description="Retries of a failed API call (5xx, 429, connection errors), within "
        "poll_timeout.",
    )
    backoff_max: float = Field(
        60.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="Upper bound in seconds for any backoff or Retry-After wait.",
    )
    concurrency: int = Field(8, ge=1, le=64, description="API requests in flight at most.")
    rate_limit: float = Field(
        200.0,
        ge=0,
        le=10000,
        allow_inf_nan=False,
        description="API requests per second at most; fractions allowed (0: unlimited).",
    )
    max_response_size: int = Field(
        64 * 1024 * 1024,
        ge=64 * 1024,
        le=4 * 1024 * 1024 * 1024,
        description="Largest IceProd API response body in bytes, counted after decompression; a "
        "larger one is abandoned at that size and the call fails with reason too_large.",
    )
    max_staleness: float = Field(
        600.0,
        gt=0,
        le=30 * 86400,
        allow_inf_nan=False,
        description="Seconds the last good dataset values stay served while polls fail.",
    )
    grace_period: float = Field(
        900.0,
        ge=0,
        le=30 * 86400,
        allow_inf_nan=False,
        description="Seconds a dataset that completed or vanished keeps its final series.",
    )
    health_stall_polls: int = Field(
        3,
        ge=1,
        le=1000,
        description="/healthz fails after this many poll intervals without progress.",
    )
    compat_dataset_monitor: bool = Field(
        False,
        description="Also emit IceProd dataset_monitor's iceprod_jobs, iceprod_tasks and "
        "iceprod_future_resources_hours.",
    )
    shard: int = Field(0, ge=0, le=999, description="This replica's shard (0-based).")
    total_shards: int = Field(
        1, ge=1, le=1000, description="Number of shards splitting the datasets."
    )
    process_metrics: bool = Field(
        True, description="Export the Python process, GC and platform metrics."
    )
    log_level: str = Field("info", description="debug, info, warning or error.")
    log_format: LogFormat = Field(LogFormat.AUTO, description="auto, json or console.")

    @field_validator("api_url", "oauth_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value:
            check_url(value)
        return value.rstrip("/")

    @field_validator("listen_address")
    @classmethod
    def _address(cls, value: str) -> str:
        host = value[1:-1] if value.startswith("[") and value.endswith("]") else value
        if not _valid_host(host):
            raise ValueError("must be an IPv4 or IPv6 address or a host name")
        return host

    @model_validator(mode="after")
    def _timeouts(self) -> Settings:
        if self.poll_timeout < self.timeout:
            raise ValueError(f"poll_timeout: must be at least timeout ({self.timeout:g}s)")
        return self

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("must be one of debug, info, warning, error")
        return value.lower()

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.shard >= self.total_shards:
            raise ValueError(f"shard: must be below total_shards ({self.total_shards})")
        if self.oauth_client_secret and self.oauth_client_secret_file:
            raise ValueError(
                "oauth_client_secret: set either it or oauth_client_secret_file, not both"
            )
        if self.token and self.token_file:
            raise ValueError("token: set either it or token_file, not both")
        return self

    def redacted(self) -> dict[str, Any]:
        """Return the effective settings as plain data with every secret masked."""
        data = self.model_dump(mode="json")
        for name in ("api_url", "oauth_url"):
            data[name] = redact_url(data[name])
        for name, field in type(self).model_fields.items():
            if field.annotation == SecretStr | None and data.get(name) is not None:
                data[name] = "<redacted>"
        return data

    def require_api(self) -> None:
        """Fail unless the settings name an IceProd API and a way to authenticate."""
        if not self.api_url:
            raise ConfigError("api_url: required (set API_URL or ICEPROD_EXPORTER_API_URL)")
        mode = self.effective_auth_mode()
        setting, given = {
            AuthMode.CLIENT_CREDENTIALS: (
                "oauth_client_secret",
                self.oauth_client_secret or self.oauth_client_secret_file,
            ),
            AuthMode.REFRESH_TOKEN: ("refresh_token_file", self.refresh_token_file),
            AuthMode.STATIC_TOKEN: ("token", self.token or self.token_file),
        }[mode]
        if not given:
            raise ConfigError(f"{setting}: required for {mode.value}")
        # fail at start-up, not at the first grant, when a credential file cannot be read
        # (the files are read again at every grant, so rotated secrets are picked up)
        for name in ("oauth_client_secret_file", "refresh_token_file", "token_file"):
            path = getattr(self, name)
            if path is not None and (
                name != "refresh_token_file" or mode is AuthMode.REFRESH_TOKEN
            ):
                read_secret(None, path, name)

    def check_web_config(self) -> None:
        """Fail with one line when ``web_config_file`` is set but unusable (TLS files included)."""
        if self.web_config_file is None:
            return
        try:
            web_config.load(self.web_config_file)
        except web_config.WebConfigError as exc:
            raise ConfigError(f"web_config_file: {exc}") from None

    def effective_auth_mode(self) -> AuthMode:
        """Resolve ``auto`` to the concrete mode the given credentials imply."""
        if self.auth_mode is not AuthMode.AUTO:
            return self.auth_mode
        if self.oauth_client_secret or self.oauth_client_secret_file:
            return AuthMode.CLIENT_CREDENTIALS
        if self.refresh_token_file:
            return AuthMode.REFRESH_TOKEN
        if self.token or self.token_file:
            return AuthMode.STATIC_TOKEN
        raise ConfigError(
            "auth_mode: no credentials (set OAUTH_CLIENT_SECRET, "
            "ICEPROD_EXPORTER_REFRESH_TOKEN_FILE or ICEPROD_EXPORTER_TOKEN)"
        )


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    return bool(host) and len(host) <= 253 and all(_HOST_LABEL.fullmatch(x) for x in labels)


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def check_url(value: str) -> None:
    """Raise ValueError unless ``value`` is an http(s) URL with a valid host (never echoed)."""
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018  # raises on a port that is not a number or out of range
    except ValueError:
        raise ValueError("must be an http:// or https:// URL with a valid host and port") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("must start with http:// or https://")
    if not parts.hostname or not _valid_host(parts.hostname):
        raise ValueError("must name a valid host (http://host[:port]/...)")


def redact_url(value: str) -> str:
    """The URL with a password in its userinfo replaced, for display and logs."""
    parts = urllib.parse.urlsplit(value)
    if parts.password is None:
        return value
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:<redacted>@{host}"))


def env_name(field: str) -> str:
    """Return the ``ICEPROD_EXPORTER_*`` variable of a setting."""
    return ENV_PREFIX + field.upper()


def from_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """Pick the settings out of an environment; prefixed names beat IceProd's names."""
    values: dict[str, str] = {}
    for alias, field in ICEPROD_ENV_ALIASES.items():
        if environ.get(alias):
            values[field] = environ[alias]
    for field in Settings.model_fields:
        if env_name(field) in environ:
            values[field] = environ[env_name(field)]
    return values


def from_file(path: Path) -> dict[str, Any]:
    """Read a YAML settings file (a flat mapping of setting names)."""
    text = read_text(path, "config_file")
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # the position only: the offending line may hold a secret
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config_file: {path} is not valid YAML{where}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config_file: {path} must hold a mapping of settings")
    return loaded


def load(
    flags: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge defaults < file < environment < flags and validate the result.

    ``defaults`` replaces built-in defaults (the demo polls faster, for instance).
    """
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = dict(defaults or {})
    if config_file is None and environ.get(env_name("config_file")):
        config_file = Path(environ[env_name("config_file")])
    if config_file is not None:
        merged.update(from_file(config_file))
    merged.update(from_environment(environ))
    merged.update({key: value for key, value in flags.items() if value is not None})
    return validate(merged)


def validate(values: Mapping[str, Any]) -> Settings:
    """Build settings, turning the first validation error into one line naming the setting."""
    try:
        return Settings.model_validate(dict(values))
    except ValidationError as exc:
        error = exc.errors()[0]
        name = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown setting"
        # the offending value is left out on purpose: it may be a secret; cross-field checks
        # (no location) already start with the setting's name
        raise ConfigError(f"{name}: {message}" if name else message) from None


def read_text(path: Path, setting: str) -> str:
    """A UTF-8 file's text; any problem is one line naming the setting (never the content)."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{setting}: {path} is not UTF-8 text (byte {exc.start})") from None


def read_secret(value: SecretStr | None, path: Path | None, setting: str) -> str | None:
    """Return a secret given inline or in a file (surrounding whitespace stripped)."""
    if value is not None:
        return value.get_secret_value()
    if path is None:
        return None
    text = read_text(path, setting).strip()
    if not text:
        raise ConfigError(f"{setting}: {path} is empty")
    return text
