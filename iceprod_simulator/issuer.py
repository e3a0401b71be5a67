"""A local OpenID Connect issuer shaped like IceCube's Keycloak realm, for tests and demos."""

import base64
import json
import secrets
import string
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from iceprod_simulator.service import ServerThread, Service

REALM_PATH = "/realms/IceCube"
_OIDC_PATH = "/protocol/openid-connect"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEVICE_CODE_TTL = 600  # Keycloak's default lifetime of a device code, seconds


@dataclass(frozen=True)
class IssuedToken:
    """An access token the issuer handed out."""

    jti: str
    client_id: str
    iat: int
    exp: int
    token: str


@dataclass
class _Client:
    """A registered client: its secret (None for a public client) and extra claims."""

    secret: str | None
    claims: dict[str, object]


@dataclass
class _DeviceCode:
    """A pending device authorization."""

    client_id: str
    user_code: str
    scope: str
    expires: float
    approved: bool = False


class OAuthError(Exception):
    """An OAuth error answer: HTTP status and the `error` code."""

    def __init__(self, status: int, error: str, description: str | None = None):
        """Keep the status, error code and optional description."""
        super().__init__(error)
        self.status = status
        self.body: dict[str, str] = {"error": error}
        if description:
            self.body["error_description"] = description


class OIDCIssuer(Service):
    """Discovery, JWKS and a token endpoint (client credentials, rotating refresh, device)."""

    def __init__(
        self,
        token_ttl: float = 300.0,
        port: int = 0,
        *,
        audience: str | None = "iceprod",
        refresh_ttl: float = 1800.0,
        auto_approve_devices: bool = False,
        device_interval: float = 5,
    ):
        """Make a fresh RSA signing key; nothing listens until start()."""
        self.token_ttl = token_ttl
        # seconds the issuer's clock runs ahead of this host's (negative: behind); its tokens'
        # iat/exp follow it, as those of an issuer whose clock is off do
        self.clock_offset = 0.0
        self.delay = 0.0
        self.drip = 0.0  # seconds between the bytes of a token answer (0: all at once)
        self.fail_status: int | None = None
        self.audience = audience
        self.refresh_ttl = refresh_ttl
        self.auto_approve_devices = auto_approve_devices
        self.device_interval = device_interval
        self.issued: list[IssuedToken] = []
        self.token_requests: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._kid = uuid.uuid4().hex
        # refresh tokens are HS256 with a kid outside the JWKS, as Keycloak signs them
        self._refresh_secret = secrets.token_bytes(32)
        self._refresh_kid = uuid.uuid4().hex
        self._clients: dict[str, _Client] = {}
        self._live_refresh: dict[str, str] = {}  # jti -> client_id
        self._devices: dict[str, _DeviceCode] = {}  # device_code -> pending authorization
        self._port = port
        self._serving: ServerThread | None = None

    @property
    def url(self) -> str:
        """The realm base URL (what rest_tools calls token_url)."""
        return f"http://127.0.0.1:{self._port}{REALM_PATH}"

    def start(self) -> None:
        """Listen on 127.0.0.1 (the same port again after a stop) from a daemon thread."""
        if self._serving is not None:
            raise RuntimeError("issuer already running")
        server = _Server(("127.0.0.1", self._port), self)
        self._port = server.server_address[1]
        self._serving = ServerThread(server)

    def stop(self) -> None:
        """Stop listening; tokens, clients and records are kept."""
        if self._serving is None:
            return
        self._serving.close()
        self._serving = None

    def register_client(
        self, client_id: str, secret: str | None, claims: Mapping[str, object]
    ) -> None:
        """Add a client; `claims` are merged into every access token issued to it."""
        with self._lock:
            self._clients[client_id] = _Client(secret, dict(claims))

    def issue_refresh_token(self, client_id: str) -> str:
        """A valid refresh token for a registered client, without a device flow."""
        with self._lock:
            if client_id not in self._clients:
                raise KeyError(client_id)
            return self._refresh_token(client_id, "offline_access")

    def approve_device(self, user_code: str) -> None:
        """Approve a pending device authorization, as the user would in a browser."""
        with self._lock:
            for device in self._devices.values():
                if device.user_code == user_code:
                    device.approved = True
                    return
        raise KeyError(user_code)

    def jwks(self) -> dict[str, Any]:
        """The JWKS document: the one RSA signing key."""
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        return {"keys": [{**jwk, "kid": self._kid, "use": "sig", "alg": "RS256"}]}

    def validate(self, token: str, leeway: float = 0.0) -> dict[str, Any]:
        """Verify an access token's signature, exp, iss (and aud when configured)."""
        claims: dict[str, Any] = jwt.decode(
            token,
            self._key.public_key(),
            algorithms=["RS256"],
            audience=self.audience,
            issuer=self.url,
            leeway=leeway,
            options={"require": ["exp", "iat", "iss", "sub"]},
        )
        return claims

    def discovery(self) -> dict[str, Any]:
        """The .well-known/openid-configuration document."""
        base = self.url + _OIDC_PATH
        return {
            "issuer": self.url,
            "token_endpoint": base + "/token",
            "jwks_uri": base + "/certs",
            "device_authorization_endpoint": base + "/auth/device",
            "grant_types_supported": ["client_credentials", "refresh_token", DEVICE_GRANT],
        }

    def token(self, form: Mapping[str, str], basic: tuple[str, str] | None) -> dict[str, Any]:
        """Answer a token endpoint request (after the delay/fail knobs) or raise OAuthError."""
        grant = form.get("grant_type", "")
        with self._lock:
            self.token_requests[grant] += 1
        time.sleep(self.delay)
        if self.fail_status is not None:
            raise OAuthError(self.fail_status, "temporarily_unavailable")
        with self._lock:
            client_id, client = self._authenticate(form, basic)
            if grant == "client_credentials":
                if client.secret is None:
                    raise OAuthError(400, "unauthorized_client", "Public client")
                return self._tokens(client_id, form.get("scope", ""), refresh=False)
            if grant == "refresh_token":
                scope = self._redeem_refresh(client_id, form.get("refresh_token", ""))
                return self._tokens(client_id, scope, refresh=True)
            if grant == DEVICE_GRANT:
                scope = self._redeem_device(client_id, form.get("device_code", ""))
                return self._tokens(client_id, scope, refresh=True)
        raise OAuthError(400, "unsupported_grant_type")

    def device_authorization(
        self, form: Mapping[str, str], basic: tuple[str, str] | None
    ) -> dict[str, Any]:
        """Start a device authorization (RFC 8628)."""
        with self._lock:
            client_id, _ = self._authenticate(form, basic)
            device_code = secrets.token_urlsafe(24)
            letters = "".join(secrets.choice(string.ascii_uppercase) for _ in range(8))
            user_code = f"{letters[:4]}-{letters[4:]}"
            self._devices[device_code] = _DeviceCode(
                client_id, user_code, form.get("scope", ""), time.time() + DEVICE_CODE_TTL
            )
        verification_uri = f"{self.url}/device"
        return {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": verification_uri,
            "verification_uri_complete": f"{verification_uri}?user_code={user_code}",
            "expires_in": DEVICE_CODE_TTL,
            "interval": self.device_interval,
        }

    def _authenticate(
        self, form: Mapping[str, str], basic: tuple[str, str] | None
    ) -> tuple[str, _Client]:
        """The calling client, from HTTP Basic or the form (client_secret_post)."""
        if basic is None:
            client_id, secret = form.get("client_id", ""), form.get("client_secret")
        else:
            client_id, secret = basic
        client = self._clients.get(client_id)
        if client is None or (client.secret is not None and secret != client.secret):
            raise OAuthError(401, "invalid_client", "Invalid client or Invalid client credentials")
        return client_id, client

    def _redeem_refresh(self, client_id: str, token: str) -> str:
        """Spend a refresh token (each is single-use) and return its scope."""
        try:
            claims = jwt.decode(
                token, self._refresh_secret, algorithms=["HS256"], options={"verify_aud": False}
            )
        except jwt.ExpiredSignatureError as exc:
            raise OAuthError(400, "invalid_grant", "Token is not active") from exc
        except jwt.PyJWTError as exc:
            raise OAuthError(400, "invalid_grant", "Invalid refresh token") from exc
        if claims.get("azp") != client_id:
            raise OAuthError(400, "invalid_grant", "Token client and authorized client don't match")
        if self._live_refresh.pop(claims.get("jti", ""), None) is None:
            raise OAuthError(400, "invalid_grant", "Stale token")
        scope: str = claims.get("scope", "")
        return scope

    def _redeem_device(self, client_id: str, device_code: str) -> str:
        """Spend an approved device code and return its scope."""
        device = self._devices.get(device_code)
        if device is None or device.client_id != client_id:
            raise OAuthError(400, "invalid_grant", "Device code not valid")
        if time.time() > device.expires:
            raise OAuthError(400, "expired_token")
        if not (device.approved or self.auto_approve_devices):
            raise OAuthError(400, "authorization_pending")
        del self._devices[device_code]
        return device.scope

    def _subject(self, client_id: str) -> str:
        """A stable subject id per client, like a Keycloak user id."""
        return str(uuid.uuid5(uuid.NAMESPACE_DNS, client_id))

    def _tokens(self, client_id: str, scope: str, *, refresh: bool) -> dict[str, Any]:
        """A token response: a new access token, plus a new refresh token if asked."""
        now = time.time() + self.clock_offset
        iat = int(now)
        exp = int(now + self.token_ttl)
        jti = uuid.uuid4().hex
        claims: dict[str, object] = {
            "exp": exp,
            "iat": iat,
            "nbf": iat,
            "jti": jti,
            "iss": self.url,
            "sub": self._subject(client_id),
            "typ": "Bearer",
            "azp": client_id,
            "scope": scope,
            "preferred_username": f"service-account-{client_id}",
        }
        if self.audience:
            claims["aud"] = self.audience
        claims.update(self._clients[client_id].claims)
        access = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self._kid})
        self.issued.append(IssuedToken(jti, client_id, iat, exp, access))
        body: dict[str, Any] = {
            "access_token": access,
            "expires_in": exp - iat,
            "refresh_expires_in": int(self.refresh_ttl) if refresh else 0,
            "token_type": "Bearer",
            "not-before-policy": 0,
            "scope": scope,
        }
        if refresh:
            body["refresh_token"] = self._refresh_token(client_id, scope)
        return body

    def _refresh_token(self, client_id: str, scope: str) -> str:
        """A new live refresh token (caller holds the lock)."""
        now = int(time.time())
        jti = uuid.uuid4().hex
        self._live_refresh[jti] = client_id
        claims = {
            "exp": now + int(self.refresh_ttl),
            "iat": now,
            "jti": jti,
            "iss": self.url,
            "aud": self.url,
            "sub": self._subject(client_id),
            "typ": "Refresh",
            "azp": client_id,
            "scope": scope,
        }
        return jwt.encode(
            claims, self._refresh_secret, algorithm="HS256", headers={"kid": self._refresh_kid}
        )


class _Server(ThreadingHTTPServer):
    """The HTTP server, holding its issuer for the request handler."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], issuer: OIDCIssuer):
        """Bind `address` for `issuer`."""
        super().__init__(address, _Handler)
        self.issuer = issuer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet when a client hung up (a token call that timed out): not an issuer error."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Routes the realm's endpoints to the issuer (HTTP/1.0: one request per connection)."""

    server: _Server

    def do_GET(self) -> None:
        """Discovery and JWKS."""
        issuer = self.server.issuer
        if self.path == f"{REALM_PATH}/.well-known/openid-configuration":
            self._reply(200, issuer.discovery())
        elif self.path == f"{REALM_PATH}{_OIDC_PATH}/certs":
            self._reply(200, issuer.jwks())
        else:
            self._reply(404, {"error": "not_found"})

    def do_POST(self) -> None:
        """The token and device authorization endpoints."""
        issuer = self.server.issuer
        length = int(self.headers.get("Content-Length") or 0)
        form = dict(parse_qsl(self.rfile.read(length).decode()))
        endpoints = {
            f"{REALM_PATH}{_OIDC_PATH}/token": issuer.token,
            f"{REALM_PATH}{_OIDC_PATH}/auth/device": issuer.device_authorization,
        }
        endpoint = endpoints.get(self.path)
        if endpoint is None:
            self._reply(404, {"error": "not_found"})
            return
        try:
            self._reply(200, endpoint(form, self._basic()), drip=issuer.drip)
        except OAuthError as err:
            self._reply(err.status, err.body)

    def _basic(self) -> tuple[str, str] | None:
        """Client id and secret from an HTTP Basic header, if any."""
        kind, _, value = self.headers.get("Authorization", "").partition(" ")
        if kind.lower() != "basic":
            return None
        client_id, _, secret = base64.b64decode(value).decode().partition(":")
        return client_id, secret

    def _reply(self, status: int, body: Mapping[str, Any], drip: float = 0.0) -> None:
        """Send a JSON response, all at once or a byte every ``drip`` seconds."""
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not drip:
            self.wfile.write(data)
            return
        for i in range(len(data)):  # ends when the client hangs up (the write fails)
            self.wfile.write(data[i : i + 1])
            self.wfile.flush()
            time.sleep(drip)

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests and benchmarks make many token requests."""
