"""The IceProd REST client: bounded, rate limited, retried, and measured by endpoint template."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from requests_futures.sessions import FuturesSession
from rest_tools.client import RestClient

from .auth import TokenError, TokenManager
from .telemetry import Telemetry

DATASETS = "/datasets"
JOB_COUNTS = "/datasets/{dataset_id}/job_counts/status"
TASK_COUNTS_NAME = "/datasets/{dataset_id}/task_counts/name_status"
TASK_STATS = "/datasets/{dataset_id}/task_stats"
GRIDS = "/grids"

#: reasons worth another attempt; the rest are answers, not accidents
RETRYABLE = frozenset({"timeout", "connection", "overloaded", "server_error"})


class ApiError(Exception):
    """A call that failed for good; ``reason`` is a bounded metric label."""

    def __init__(self, endpoint: str, reason: str, detail: str, status: int | None = None):
        super().__init__(f"{endpoint}: {reason} ({detail})")
        self.endpoint = endpoint
        self.reason = reason
        self.status = status


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


class _RestSession(RestClient):
    """rest-tools' client with its session replaced: no urllib3 retries and a sized pool.

    rest-tools retries 5xx inside urllib3 and then raises ``RetryError`` without the response,
    which hides the status and Retry-After; retries are done above, where they can be seen.
    """

    def __init__(self, address: str, workers: int, **kwargs: Any) -> None:
        self._workers = workers
        super().__init__(address, **kwargs)

    def open(self, sync: bool = False) -> requests.Session:
        session: requests.Session = FuturesSession(max_workers=self._workers)
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=self._workers, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers.update({"Content-Type": "application/json"})
        self.session = session
        return session


def _reason(exc: BaseException) -> tuple[str, int | None]:
    if isinstance(exc, TokenError):
        return "token", None
    if isinstance(exc, TimeoutError | requests.Timeout):
        return "timeout", None
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        by_status = {401: "unauthorized", 403: "forbidden", 404: "not_found", 429: "overloaded"}
        if status in by_status:
            return by_status[status], status
        if status == 503:
            return "overloaded", status
        return ("server_error" if status >= 500 else "client_error"), status
    if isinstance(exc, requests.ConnectionError):
        # rest-tools/urllib3 report read timeouts as ConnectionError
        return ("timeout" if "timed out" in str(exc).lower() else "connection"), None
    return "bad_response", None


def _retry_after(exc: BaseException) -> float | None:
    if not isinstance(exc, requests.HTTPError) or exc.response is None:
        return None
    value = exc.response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


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
        on_response: Callable[[], None] = lambda: None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
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
        quiet = logging.getLogger("iceprod_exporter.rest_tools")
        quiet.setLevel(logging.CRITICAL)  # failures are logged here, without tracebacks per call
        self._rest = _RestSession(
            url,
            workers=concurrency,
            token=tokens.current,
            timeout=timeout,
            retries=0,
            logger=quiet,
        )

    def close(self) -> None:
        """Shut the HTTP session and its worker threads down."""
        self._rest.close()

    async def get(self, template: str, args: dict[str, str] | None = None, **path: str) -> Any:
        """GET a route; retries transient failures, honours Retry-After, refreshes on 401."""
        route = template.format(**path)
        refreshed = False
        attempt = 0
        while True:
            try:
                return await self._attempt(template, route, args)
            except ApiError as error:
                if error.reason == "unauthorized" and not refreshed:
                    refreshed = True
                    await self._drop_token()
                    continue
                if error.reason not in RETRYABLE or attempt >= self._retries:
                    raise
                attempt += 1
                await self._sleep(self._backoff(attempt, error))

    async def _drop_token(self) -> None:
        self._tokens.invalidate()
        self._rest.access_token = None
        # on failure the retry fails with reason "token", which is what happened
        with contextlib.suppress(TokenError):
            await self._tokens.ensure_fresh(force=True)

    def _backoff(self, attempt: int, error: ApiError) -> float:
        hint = _retry_after(error.__cause__) if error.__cause__ else None
        if hint is not None:
            return min(self._backoff_max, hint)
        delay: float = min(self._backoff_max, 0.5 * 2.0 ** (attempt - 1))
        return delay * random.uniform(0.8, 1.2)

    async def _attempt(self, template: str, route: str, args: dict[str, str] | None) -> Any:
        telemetry = self._telemetry
        telemetry.in_flight.inc()
        try:
            async with self._slots:
                await self._limiter.acquire()
                telemetry.requests.labels(template).inc()
                self.sent += 1
                started = time.perf_counter()
                try:
                    await self._tokens.ensure_fresh()
                    result = await asyncio.wait_for(
                        self._rest.request("GET", route, args), self._timeout
                    )
                except Exception as exc:
                    reason, status = _reason(exc)
                    telemetry.request_failures.labels(template, reason).inc()
                    raise ApiError(template, reason, type(exc).__name__, status) from exc
                finally:
                    telemetry.request_duration.labels(template).observe(
                        time.perf_counter() - started
                    )
                    self._on_response()
                return result
        finally:
            telemetry.in_flight.dec()

    def bad_response(self, template: str, detail: str) -> ApiError:
        """Count and return the error for a body that is JSON but not the shape expected."""
        self._telemetry.request_failures.labels(template, "bad_response").inc()
        return ApiError(template, "bad_response", detail)
