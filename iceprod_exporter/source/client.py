"""The IceProd REST client: bounded, rate limited, retried, and measured by endpoint template."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import random
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

from iceprod_exporter.exposition.telemetry import Telemetry
from iceprod_exporter.source.auth import TokenError, TokenManager
from iceprod_exporter.source.labels import RETRYABLE, Endpoint, Reason
from iceprod_exporter.source.transport import Response, Transport, TransportError

log = structlog.get_logger(__name__)

#: same-origin redirects an API call follows (a trailing-slash fix-up, say); none elsewhere
API_REDIRECTS = 2

#: endpoint templates, re-exported for callers that think of them as the client's routes
DATASETS = Endpoint.DATASETS
JOB_COUNTS = Endpoint.JOB_COUNTS
TASK_COUNTS_NAME = Endpoint.TASK_COUNTS_NAME
TASK_STATS = Endpoint.TASK_STATS


def _now() -> float:
    return asyncio.get_running_loop().time()


class ApiError(Exception):
    """A call that failed for good; ``reason`` is a bounded metric label."""

    def __init__(
        self,
        endpoint: str,
        reason: Reason,
        detail: str,
        status: int | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(f"{endpoint}: {reason} ({detail})")
        self.endpoint = endpoint
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


class RateLimiter:
    """Token bucket allowing fractional rates such as 0.5 requests per second."""

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._rate = rate
        self._burst = max(1.0, rate)
        self._tokens = self._burst
        self._clock = clock
        self._sleep = sleep
        self._updated = clock()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait for one request's worth of budget (no wait when the rate is 0: unlimited)."""
        if self._rate <= 0:
            return
        async with self._lock:
            while True:
                now = self._clock()
                self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
                self._updated = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await self._sleep((1 - self._tokens) / self._rate)


_BY_STATUS = {
    401: Reason.UNAUTHORIZED,
    403: Reason.FORBIDDEN,
    404: Reason.NOT_FOUND,
    429: Reason.OVERLOADED,
    503: Reason.OVERLOADED,
}


def _route(template: str, args: Mapping[str, str] | None, path: Mapping[str, str]) -> str:
    """The route for one call: ``path`` values quoted into the template, ``args`` as the query.

    A dataset id is IceProd's data: quoted, it cannot steer the request to another route.
    """
    route = template.format(**{k: urllib.parse.quote(v, safe="") for k, v in path.items()})
    return f"{route}?{urllib.parse.urlencode(args)}" if args else route


def _status_reason(status: int) -> Reason:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return Reason.SERVER_ERROR if status >= 500 else Reason.CLIENT_ERROR


def _retry_after(response: Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, parsed.timestamp() - time.time())


class ApiClient:
    """GETs IceProd routes by endpoint template; the only place that talks to the API."""

    def __init__(
        self,
        url: str,
        tokens: TokenManager,
        telemetry: Telemetry,
        *,
        timeout: float,
        retries: int,
        backoff_max: float,
        concurrency: int,
        rate_limit: float,
        max_response_size: int = 64 * 1024 * 1024,
        on_response: Callable[[], None] = lambda: None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._base = url.rstrip("/")
        self._tokens = tokens
        self._telemetry = telemetry
        self._timeout = timeout
        self._retries = retries
        self._backoff_max = backoff_max
        self._sleep = sleep
        self._on_response = on_response
        self.sent = 0  # requests sent so far, retries included (for the poll summary)
        self._slots = asyncio.Semaphore(concurrency)
        self._limiter = RateLimiter(rate_limit, sleep=sleep)
        self._http = Transport(max_body=max_response_size, connections=concurrency)
        self._too_large: set[str] = set()  # templates whose last answer was over the cap

    def close(self) -> None:
        """Release the HTTP client (a call in flight ends by its own deadline)."""
        self._http.close()

    async def get(
        self,
        template: str,
        args: dict[str, str] | None = None,
        *,
        deadline: float | None = None,
        **path: str,
    ) -> Any:
        """GET a route; retries fast failures, honours Retry-After, refreshes on 401.

        ``deadline`` (event-loop time) bounds everything: the wait for a slot, the attempts and
        the pauses between them. Past it the call fails with reason ``deadline``.
        """
        route = _route(template, args, path)
        refreshed = False
        attempt = 0
        while True:
            try:
                return await self._attempt(template, route, deadline)
            except ApiError as error:
                if error.reason == Reason.UNAUTHORIZED and not refreshed:
                    refreshed = True  # the 401 dropped the token it was sent with
                    await self._fresh_token(deadline)
                    continue
                if error.reason not in RETRYABLE or attempt >= self._retries:
                    raise
                attempt += 1
                delay = self._backoff(attempt, error)
                if deadline is not None and _now() + delay >= deadline:
                    raise  # the retry would end past the poll's deadline
                await self._sleep(delay)

    async def _fresh_token(self, deadline: float | None) -> None:
        # on failure the retry fails with reason "token" (or "deadline"), which is what happened
        with contextlib.suppress(TokenError, TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self._tokens.ensure_fresh()

    def _backoff(self, attempt: int, error: ApiError) -> float:
        if error.retry_after is not None:
            return min(self._backoff_max, error.retry_after)
        delay: float = min(self._backoff_max, 0.5 * 2.0 ** (attempt - 1))
        return delay * random.uniform(0.8, 1.2)

    async def _attempt(self, template: str, route: str, deadline: float | None) -> Any:
        telemetry = self._telemetry
        telemetry.in_flight.inc()
        try:
            await self._take_slot(template, deadline)
            try:
                return await self._send(template, route, deadline)
            finally:
                self._slots.release()
        finally:
            telemetry.in_flight.dec()

    async def _take_slot(self, template: str, deadline: float | None) -> None:
        """Wait for a free slot and the rate limiter, no longer than ``deadline``."""
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
                try:
                    await self._limiter.acquire()
                except BaseException:
                    self._slots.release()
                    raise
        except TimeoutError:
            raise self._failed(
                template, Reason.DEADLINE, "no free slot before the deadline"
            ) from None

    async def _send(self, template: str, route: str, deadline: float | None) -> Any:
        telemetry = self._telemetry
        telemetry.requests.labels(template).inc()
        self.sent += 1
        budget = self._timeout if deadline is None else min(self._timeout, deadline - _now())
        started = time.perf_counter()
        try:
            response, used = await self._fetch(template, route, budget)
            if response.status == 401:
                self._tokens.invalidate(used)
            return self._decode(template, response)
        finally:
            telemetry.request_duration.labels(template).observe(time.perf_counter() - started)
            self._on_response()

    async def _fetch(self, template: str, route: str, budget: float) -> tuple[Response, str]:
        """The answer to one request, and the token it was sent with; failures as ApiError."""
        end = _now() + budget
        try:
            # a grant in progress is waited for within the budget; the transport then ends
            # the call (and closes its socket) when the budget ends, whatever IceProd does
            async with asyncio.timeout_at(end):
                await self._tokens.ensure_fresh()
            used = self._tokens.current()
            response = await self._http.fetch(
                self._base + route,
                timeout=end - _now(),
                headers={"Authorization": f"Bearer {used}", "Accept": "application/json"},
                redirects=API_REDIRECTS,
            )
        except TokenError:
            raise self._failed(template, Reason.TOKEN, "no usable token") from None
        except TimeoutError:
            raise self._failed(template, self._timed_out(budget), "token wait") from None
        except TransportError as exc:
            reason = exc.reason
            if reason == Reason.TIMEOUT:
                reason = self._timed_out(budget)
            elif reason == Reason.TOO_LARGE:
                self._oversized(template, True, str(exc))
            raise self._failed(template, reason, str(exc)) from None
        return response, used

    def _decode(self, template: str, response: Response) -> Any:
        """The JSON of a successful answer; any other answer as ApiError."""
        if response.status >= 300:
            raise self._failed(
                template,
                _status_reason(response.status),
                f"HTTP {response.status}",
                response.status,
                _retry_after(response),
            )
        try:
            # the standard decoder: rest-tools' logs a traceback per ``__jsonclass__`` object
            body = json.loads(response.body) if response.body else None
        except ValueError:
            raise self._failed(template, Reason.BAD_RESPONSE, "not JSON") from None
        self._oversized(template, False)
        return body

    def _timed_out(self, budget: float) -> Reason:
        return Reason.DEADLINE if budget < self._timeout else Reason.TIMEOUT

    def _oversized(self, template: str, over: bool, detail: str = "") -> None:
        """Log when a route's answers start passing max_response_size, not once per call."""
        if not over:
            self._too_large.discard(template)
        elif template not in self._too_large:
            self._too_large.add(template)
            log.warning(
                "api.response_too_large",
                endpoint=template,
                error=detail,
                hint="raise max_response_size if IceProd's answers really are this large",
            )

    def _failed(
        self,
        template: str,
        reason: Reason,
        detail: str,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> ApiError:
        self._telemetry.request_failures.labels(template, reason).inc()
        return ApiError(template, reason, detail, status, retry_after)

    def bad_response(self, template: str, detail: str) -> ApiError:
        """Count and return the error for a body that is JSON but not the shape expected."""
        return self._failed(template, Reason.BAD_RESPONSE, detail)
