"""Tornado handlers that answer like the real server's APIBase, Health and catch-all Error."""

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from tornado.httputil import HTTPHeaders
from tornado.web import Application, HTTPError, RequestHandler

from iceprod_simulator.access import (
    BYPASS_ROLES,
    SYSTEM_CLAIMS,
    TokenValidator,
    groups_of,
    roles_of,
    username_of,
)
from iceprod_simulator.faults import Faults
from iceprod_simulator.model import Simulation
from iceprod_simulator.records import Records
from iceprod_simulator.routes import ROUTES, Call
from iceprod_simulator.store import Store

ICEPROD_VERSION = "3.2.43"
# APIBase.prepare adds these; error responses lose them because send_error clears headers
_NO_STORE_HEADERS = (
    ("Cache-Control", "no-store, no-cache, must-revalidate, max-age=0"),
    ("Pragma", "no-cache"),
    ("Expires", "0"),
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none';"),
)


@dataclass(frozen=True)
class Context:
    """Everything the handlers share."""

    store: Store
    validator: TokenValidator | None  # None: every request is a system request
    faults: Faults
    records: Records
    simulation: Simulation | None = None


def bearer_token(headers: HTTPHeaders) -> str | None:
    """The token of an `Authorization: Bearer` header, or None."""
    kind, _, token = headers.get("Authorization", "").partition(" ")
    return token if kind.lower() == "bearer" and token else None


class _Instrumented(RequestHandler):
    """Counts requests and applies the server-wide faults before any handler runs."""

    retry_after: int | None = None

    def initialize(self, context: Context, template: str) -> None:
        """Keep the shared context and the route template this handler counts under."""
        self.context = context
        self.template = template

    def set_default_headers(self) -> None:
        """Keep an injected Retry-After through send_error, which resets headers."""
        if self.retry_after is not None:
            self.set_header("Retry-After", self.retry_after)

    async def prepare(self) -> None:
        """Record the request, then delay or fail it as the faults say."""
        self._cpu_started = time.thread_time()  # handlers run on the one IOLoop thread
        self.context.records.saw(self.template, bearer_token(self.request.headers), time.time())
        faults = self.context.faults
        if faults.delay > 0:
            await asyncio.sleep(faults.delay)
        if faults.fail_status is not None:
            self.retry_after = faults.retry_after
            raise HTTPError(faults.fail_status, reason=faults.fail_reason)

    def on_finish(self) -> None:
        """Charge the CPU this request took (faults' sleeps cost none)."""
        started = getattr(self, "_cpu_started", None)
        if started is not None:
            self.context.records.spent(self.template, time.thread_time() - started)


class HealthHandler(_Instrumented):
    """GET /healthz: a plain tornado handler, no auth."""

    def get(self) -> None:
        """Answer {}."""
        self.write({})


class RecordsHandler(_Instrumented):
    """GET /_simulator/requests: requests and CPU per route template (not an IceProd route)."""

    def get(self) -> None:
        """Answer the counts and CPU seconds, so benchmarks can tell what any client cost."""
        records = self.context.records
        self.write({"requests": records.request_counts(), "cpu_seconds": records.cpu_seconds()})


class PauseHandler(_Instrumented):
    """PUT /_simulator/paused with ``true`` or ``false``: stop or restart the world's ticks."""

    def put(self) -> None:
        """Pause or resume the simulation (not an IceProd route)."""
        if self.context.simulation is None:
            raise HTTPError(409, reason="no simulation")
        self.context.simulation.paused = self.request.body.strip() == b"true"
        self.write({"paused": self.context.simulation.paused})


class NotFoundHandler(_Instrumented):
    """Any other path: tornado's HTML 404 page, as the real catch-all gives."""

    async def prepare(self) -> None:
        """Fail every method with 404."""
        await super().prepare()
        raise HTTPError(404)


class ApiHandler(_Instrumented):
    """One read route, with the real server's headers, auth checks and JSON errors."""

    # rest_tools fills server_header in initialize(), after tornado's first clear(): so the
    # real server sends an empty Server header, except on errors (send_error clears again)
    server_header = ""

    def initialize(self, context: Context, template: str) -> None:
        """Look up the route served under `template`."""
        super().initialize(context, template)
        self.server_header = f"IceProd/{ICEPROD_VERSION}"
        self.route = ROUTES[template]
        self.claims: dict[str, Any] = {}
        self.auth_roles: list[str] = []
        self.auth_groups: list[str] = []

    def set_default_headers(self) -> None:
        """Announce the real server's version (see server_header)."""
        self.set_header("Server", self.server_header)
        super().set_default_headers()

    async def prepare(self) -> None:
        """Apply faults, then add APIBase's no-store headers."""
        await super().prepare()
        for name, value in _NO_STORE_HEADERS:
            self.set_header(name, value)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Write rest_tools' JSON error body."""
        self.finish({"code": status_code, "error": self._reason})

    def get_current_user(self) -> Any:
        """The username APIBase derives from a valid token (any claim value), or None."""
        claims = self._validated_claims()
        if claims is None or not claims.get("sub"):
            return None
        self.claims = claims
        return username_of(claims)

    def _validated_claims(self) -> dict[str, Any] | None:
        """The bearer token's claims, or None when it is missing or does not validate."""
        validator = self.context.validator
        if validator is None:
            return SYSTEM_CLAIMS
        token = bearer_token(self.request.headers)
        if token is None:
            return None
        try:
            return validator.validate(token)
        except Exception:  # rest_tools counts any validation error as a failed login
            return None

    async def get(self, *args: str, **kwargs: str) -> None:
        """Authorize like @authorization and @attr_auth, then write the route's body."""
        route = self.route
        fault = self.context.faults.datasets.get(kwargs.get("dataset_id", ""))
        if fault is not None:
            if fault.body is None:
                raise HTTPError(fault.status, reason=fault.reason)
            self.finish(fault.body)
            return
        if not self.current_user:
            raise HTTPError(403, reason="authentication failed")
        try:
            self.auth_roles = roles_of(self.claims, route.roles)
        except Exception as exc:
            raise HTTPError(500, reason="internal server error") from exc
        if not self.auth_roles:
            raise HTTPError(403, reason="authorization failed")
        try:
            self.auth_groups = groups_of(self.claims)
        except Exception as exc:
            raise HTTPError(500, reason="internal server error") from exc
        if route.dataset_acl:
            self._check_read(kwargs["dataset_id"])
        call = Call(self.context.store, kwargs, self._argument, self._readable)
        try:
            with self.context.store.lock:
                self.write(route.respond(call))
        except HTTPError:
            raise
        except Exception as exc:  # catch_error's generic 500
            raise HTTPError(500, reason=f"Error in {route.handler}") from exc

    def _argument(self, name: str) -> str | None:
        """A query argument, stripped, the last one when repeated."""
        return self.get_argument(name, None)

    def _bypasses_acl(self) -> bool:
        """Admin and system tokens skip the per-dataset ACL."""
        return bool(BYPASS_ROLES.intersection(self.auth_roles))

    def _in_acl(self, dataset_id: str) -> bool:
        """check_attr_auth(read): a shared group, or the user is a listed reader."""
        auth = self.context.store.auth.get(dataset_id)
        return auth is not None and (
            bool(set(auth.read_groups) & set(self.auth_groups))
            or self.current_user in auth.read_users
        )

    def _readable(self, dataset_id: str) -> bool:
        """manual_attr_auth(read), the per-row filter of the dataset list routes."""
        return self._bypasses_acl() or self._in_acl(dataset_id)

    def _check_read(self, dataset_id: str) -> None:
        """@attr_auth(arg='dataset_id', role='read'), with its 403 reasons."""
        if self._bypasses_acl():
            return
        if dataset_id not in self.context.store.auth:
            raise HTTPError(403, reason="attr not found")
        if not self._in_acl(dataset_id):
            raise HTTPError(403, reason="authorization failed")


def _no_access_log(handler: RequestHandler) -> None:
    """Skip tornado's per-request log line (thousands per poll in benchmarks)."""


def make_app(context: Context) -> Application:
    """The tornado application: the read routes, /healthz, the request counts, the 404s."""
    rules: list[Any] = [
        (route.pattern, ApiHandler, {"context": context, "template": template})
        for template, route in ROUTES.items()
    ]
    for path, handler in (
        ("/healthz", HealthHandler),
        ("/_simulator/requests", RecordsHandler),
        ("/_simulator/paused", PauseHandler),
    ):
        rules.append((path, handler, {"context": context, "template": path}))
    rules.append((r"/(.*)", NotFoundHandler, {"context": context, "template": "*"}))
    return Application(rules, log_function=_no_access_log)
