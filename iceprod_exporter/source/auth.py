"""Bearer tokens for the IceProd API: acquisition with timeouts, caching, refresh ahead of expiry.

The API client takes the cached token from :meth:`TokenManager.current`, which never touches the
network. Grants are made here on the event loop through the bounded transport (a total deadline,
a body cap, no redirects), in wipac-rest-tools' conventions: the realm URL plus discovery, the
client-credentials form rest-tools sends, and the refresh-token file its device login writes
(see docs/design.md).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jwt
import structlog
from pydantic import SecretStr

from iceprod_exporter.config import AuthMode, ConfigError, Settings, read_secret
from iceprod_exporter.exposition.telemetry import Telemetry
from iceprod_exporter.source.labels import Reason
from iceprod_exporter.source.transport import Response, Transport, TransportError, same_origin

log = structlog.get_logger(__name__)

#: rest-tools considers a token expired 5 s before ``exp``; refreshing earlier keeps it unused.
REFRESH_FRACTION = 0.5
REFRESH_MARGIN_MAX = 60.0
TOKEN_BACKOFF_MAX = 60.0
#: seconds between two grants at least, whatever the tokens' lifetimes or a 401 storm say
GRANT_MIN_INTERVAL = 1.0
#: discovery documents and token answers are a few KiB; anything past this is not one
AUTH_MAX_BODY = 1024 * 1024
#: what a bearer token may hold (RFC 6750 b64token): nothing that could end a header line
BEARER = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class TokenError(Exception):
    """No token could be obtained; ``reason`` is a bounded metric label."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Token:
    """An access token and when it expires (None when it does not say)."""

    value: str
    expires_at: float | None
    issued_at: float

    def __repr__(self) -> str:
        return f"Token(expires_at={self.expires_at!r})"

    def needs_refresh(self, now: float) -> bool:
        """True once the token is within its refresh margin of expiry."""
        if self.expires_at is None:
            return False
        lifetime = max(self.expires_at - self.issued_at, 0.0)
        margin = min(REFRESH_MARGIN_MAX, lifetime * REFRESH_FRACTION)
        return now >= self.expires_at - margin


class Grant(Protocol):
    """A way to get a fresh access token, bounded by its own timeouts."""

    async def fetch(self) -> tuple[str, float | None]:
        """Return the token and, when the issuer says, its lifetime in seconds."""
        ...


def token_expiry(value: str) -> float | None:
    """A JWT's ``exp`` claim, read without verifying the token; None when it has none."""
    try:
        claims = jwt.decode(value, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    exp = claims.get("exp")
    return float(exp) if isinstance(exp, int | float) else None


class OpenIDProvider:
    """The endpoints of an OpenID Connect realm, found by discovery (cached).

    The discovery document must name the realm itself as ``issuer`` (OpenID Connect Discovery
    4.3) and endpoints on the realm's origin; no request follows a redirect, so the client
    secret and refresh token only ever go to the configured origin.
    """

    def __init__(self, realm_url: str, timeout: float) -> None:
        self.realm_url = realm_url.rstrip("/")
        self.timeout = timeout
        self._http = Transport(max_body=AUTH_MAX_BODY, connections=0)
        self._document: dict[str, Any] | None = None

    async def token_endpoint(self) -> str:
        """Discover (once) and return the token endpoint."""
        return self._endpoint(await self._discovered(), "token_endpoint")

    async def device_endpoint(self) -> str:
        """Discover (once) and return the device authorization endpoint (RFC 8628)."""
        document = await self._discovered()
        if "device_authorization_endpoint" not in document:
            raise TokenError(Reason.CONFIG, "OpenID discovery: the realm offers no device flow")
        return self._endpoint(document, "device_authorization_endpoint")

    async def _discovered(self) -> dict[str, Any]:
        if self._document is None:
            url = f"{self.realm_url}/.well-known/openid-configuration"
            response = await self._call("OpenID discovery", url)
            if response.status >= 300:
                raise TokenError(Reason.BAD_RESPONSE, f"OpenID discovery: HTTP {response.status}")
            try:
                document = json.loads(response.body)
                issuer, _ = document["issuer"], document["token_endpoint"]
            except (ValueError, KeyError, TypeError):
                raise TokenError(
                    Reason.BAD_RESPONSE, "OpenID discovery: no issuer and token_endpoint"
                ) from None
            if not isinstance(issuer, str) or issuer.rstrip("/") != self.realm_url:
                raise TokenError(
                    Reason.BAD_RESPONSE,
                    "OpenID discovery: its issuer is not oauth_url (OpenID Connect Discovery 4.3)",
                )
            self._endpoint(document, "token_endpoint")
            self._document = document
        return self._document

    def _endpoint(self, document: dict[str, Any], name: str) -> str:
        """One endpoint of the document; it must be on the realm's origin."""
        endpoint = document[name]
        if not isinstance(endpoint, str) or not same_origin(endpoint, self.realm_url):
            raise TokenError(Reason.REDIRECT, f"OpenID discovery: {name} not on oauth_url's origin")
        return endpoint

    async def post(
        self, form: dict[str, str], auth: tuple[str, str] | None = None
    ) -> dict[str, Any]:
        """POST a grant to the token endpoint; errors carry the OAuth error name, no secrets."""
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if auth is not None:
            basic = base64.b64encode(":".join(auth).encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        response = await self._call(
            "token request",
            await self.token_endpoint(),
            method="POST",
            headers=headers,
            body=urllib.parse.urlencode(form).encode(),
        )
        try:
            body = json.loads(response.body)
        except ValueError:
            body = None
        if response.status >= 400:
            error = body.get("error", "") if isinstance(body, dict) else ""
            error = error if isinstance(error, str) and error.isidentifier() else ""
            raise TokenError(
                Reason.REJECTED,
                f"token request failed: HTTP {response.status} {error}".strip(),
            )
        if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise TokenError(Reason.BAD_RESPONSE, "token request: no access_token in the answer")
        if not BEARER.fullmatch(body["access_token"]):
            raise TokenError(Reason.BAD_RESPONSE, "token request: access_token not a b64token")
        return body

    async def _call(self, what: str, url: str, **kwargs: Any) -> Response:
        try:
            return await self._http.fetch(url, timeout=self.timeout, **kwargs)
        except TransportError as exc:
            raise TokenError(exc.reason, f"{what}: {exc}") from None


def _lifetime(body: dict[str, Any]) -> float | None:
    expires_in = body.get("expires_in")
    return float(expires_in) if isinstance(expires_in, int | float) else None


class ClientCredentialsGrant:
    """OAuth2 client credentials (a Keycloak service account), as rest-tools sends them."""

    def __init__(self, provider: OpenIDProvider, client_id: str, secret: Callable[[], str]):
        self._provider = provider
        self._client_id = client_id
        self._secret = secret

    async def fetch(self) -> tuple[str, float | None]:
        """Run the client-credentials grant."""
        body = await self._provider.post(
            {
                "grant_type": "client_credentials",
                "client_id": self._client_id,
                "client_secret": self._secret(),
                "scope": "offline_access",
            }
        )
        return body["access_token"], _lifetime(body)


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with a 0600 file (rotation must never leave half a token)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RefreshTokenGrant:
    """A saved refresh token (from ``iceprod-exporter login``), rotated in place.

    Never falls back to an interactive login, unlike rest-tools' ``SavedDeviceGrantAuth``.
    """

    def __init__(
        self,
        provider: OpenIDProvider,
        client_id: str,
        path: Path,
        secret: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._provider = provider
        self._client_id = client_id
        self._path = path
        self._secret = secret

    async def fetch(self) -> tuple[str, float | None]:
        """Run the refresh-token grant and save the rotated refresh token."""
        refresh_token = _configured(None, self._path, "refresh_token_file")
        assert refresh_token is not None  # a path was given
        secret = self._secret()
        auth = (self._client_id, secret) if secret else None
        body = await self._provider.post(
            {
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "client_id": self._client_id,
            },
            auth=auth,
        )
        rotated = body.get("refresh_token")
        if isinstance(rotated, str) and rotated and rotated != refresh_token:
            write_private(self._path, rotated)
        return body["access_token"], _lifetime(body)


class StaticTokenGrant:
    """A fixed bearer token, inline or re-read from a file on every refresh."""

    def __init__(self, value: str | None = None, path: Path | None = None) -> None:
        self._value = value
        self._path = path

    async def fetch(self) -> tuple[str, float | None]:
        """Return the configured token."""
        token = _configured(self._value, self._path, "token_file")
        if not token or not BEARER.fullmatch(token):
            raise TokenError(Reason.CONFIG, "token: empty or not a bearer token (RFC 6750)")
        return token, None


class TokenManager:
    """Caches the access token and refreshes it on the event loop, one grant at a time.

    Grants are at least ``min_interval`` seconds apart, and a failed one is retried with
    backoff (up to ``backoff_max``: the daemon uses the poll interval, so a healed issuer is
    asked again within one), so no issuer, nor IceProd answering 401, gets more than one grant
    a second. A grant runs as a task of its own on the event loop; shutdown cancels it.
    """

    def __init__(
        self,
        grant: Grant,
        telemetry: Telemetry,
        clock: Callable[[], float] = time.time,
        min_interval: float = GRANT_MIN_INTERVAL,
        backoff_max: float = TOKEN_BACKOFF_MAX,
    ) -> None:
        self._grant = grant
        self._telemetry = telemetry
        self._clock = clock
        self._min_interval = min_interval
        self._backoff_max = backoff_max
        self._token: Token | None = None
        self._granting: asyncio.Future[None] | None = None
        self.last_error: TokenError | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._granted_at: float | None = None  # when the last grant started

    def current(self) -> str:
        """The cached token; never touches the network."""
        token = self._token
        if token is None:
            raise TokenError(Reason.TOKEN, "no access token available")
        return token.value

    @property
    def expires_at(self) -> float | None:
        """Expiry of the cached token."""
        token = self._token
        return token.expires_at if token else None

    def invalidate(self, used: str | None = None) -> None:
        """Forget the cached token (after a 401), unless a newer one replaced ``used`` already.

        A 401 that comes back for a request sent with an older token must not drop the token
        granted since: every call would then wait for one more grant.
        """
        if used is None or (self._token is not None and self._token.value == used):
            self._token = None

    async def ensure_fresh(self) -> None:
        """Refresh when there is no token or it is close to expiry.

        Raises TokenError only when no usable token is left: while the issuer fails, a token
        that has not expired yet keeps being used, and the issuer is asked again with backoff
        rather than once per API request.
        """
        if self._is_fresh():
            return
        grant = self._granting
        if grant is None or grant.done() or grant.get_loop() is not asyncio.get_running_loop():
            backing_off = self.last_error is not None and self._clock() < self._retry_at
            grant = self._granting = None if backing_off else asyncio.ensure_future(self._refresh())
        if grant is not None:
            # the grant is a task of its own, bounded by token_timeout: a caller whose deadline
            # comes first stops waiting for it, and the grant still ends for the next caller
            await asyncio.shield(grant)
        if not self._usable():
            raise self.last_error or TokenError(Reason.TOKEN, "no access token available")

    def _usable(self) -> bool:
        token = self._token
        return token is not None and (token.expires_at is None or self._clock() < token.expires_at)

    def _is_fresh(self) -> bool:
        token = self._token
        return token is not None and not token.needs_refresh(self._clock())

    async def _refresh(self) -> None:
        if self._granted_at is not None:
            wait = self._granted_at + self._min_interval - self._clock()
            if wait > 0:
                await asyncio.sleep(min(wait, self._min_interval))
        started = self._granted_at = self._clock()
        try:
            value, lifetime = await self._grant.fetch()
            expires_at = _expiry(value, lifetime, started, self._clock())
        except TokenError as exc:
            self._fail(exc)
            return
        except Exception as exc:  # a grant must never take the poller down
            self._fail(TokenError(Reason.BAD_RESPONSE, f"token request: {type(exc).__name__}"))
            return
        self._token = Token(value, expires_at, issued_at=started)
        self.last_error = None
        self._failures = 0
        self._telemetry.token_refreshes.inc()
        self._telemetry.token_expiry.set(expires_at or 0)
        log.debug(
            "token.refreshed",
            expires_in=None if expires_at is None else round(expires_at - started, 1),
        )

    def _fail(self, error: TokenError) -> None:
        self.last_error = error
        self._failures += 1
        self._retry_at = self._clock() + min(self._backoff_max, 2.0 ** (self._failures - 1))
        self._telemetry.token_failures.labels(error.reason).inc()
        hint = {"hint": CLOCK_HINT} if error.reason == Reason.EXPIRED else {}
        log.warning("token.refresh_failed", reason=error.reason, error=str(error), **hint)


CLOCK_HINT = "check that this host and the issuer keep time (NTP): one of the clocks is off"


def _expiry(value: str, lifetime: float | None, started: float, now: float) -> float | None:
    """When a new token expires; TokenError(expired) if it already has (a clock is off)."""
    if lifetime is not None and lifetime <= 0:
        raise TokenError(Reason.EXPIRED, f"the issuer gave a token with expires_in {lifetime:g}")
    expires_at = token_expiry(value)
    if expires_at is None and lifetime is not None:
        expires_at = started + lifetime
    if expires_at is not None and expires_at <= now:
        raise TokenError(
            Reason.EXPIRED,
            f"the token expired on arrival: its exp is {now - expires_at:.0f}s before this "
            "host's clock",
        )
    return expires_at


def _configured(value: str | None, path: Path | None, setting: str) -> str | None:
    """A credential given inline or in a file, read at every grant (rotated files are seen)."""
    try:
        return read_secret(SecretStr(value) if value else None, path, setting)
    except ConfigError as exc:
        raise TokenError(Reason.CONFIG, str(exc)) from None


def _client_secret(settings: Settings) -> str | None:
    secret = settings.oauth_client_secret
    return _configured(
        secret.get_secret_value() if secret else None,
        settings.oauth_client_secret_file,
        "oauth_client_secret_file",
    )


def grant_from_settings(settings: Settings) -> Grant:
    """Build the grant the settings ask for (``auto`` resolved by what is configured)."""
    mode = settings.effective_auth_mode()
    if mode is AuthMode.STATIC_TOKEN:
        token = settings.token.get_secret_value() if settings.token else None
        return StaticTokenGrant(token, settings.token_file)
    provider = OpenIDProvider(settings.oauth_url, settings.token_timeout)
    if mode is AuthMode.REFRESH_TOKEN:
        assert settings.refresh_token_file is not None  # checked by Settings.require_api
        return RefreshTokenGrant(
            provider,
            settings.oauth_client_id,
            settings.refresh_token_file,
            lambda: _client_secret(settings),
        )

    def secret() -> str:
        value = _client_secret(settings)
        if value is None:
            raise TokenError(Reason.CONFIG, "oauth_client_secret: not set")
        return value

    return ClientCredentialsGrant(provider, settings.oauth_client_id, secret)
