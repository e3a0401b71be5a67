"""The IceProd REST client: bounded, rate limited, retried, and measured by endpoint template."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
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
from .labels import RETRYABLE, Endpoint, Reason
from .telemetry import Telemetry

#: endpoint templates, re-exported for callers that think of them as the client's routes
DATASETS = Endpoint.DATASETS
JOB_COUNTS = Endpoint.JOB_COUNTS
TASK_COUNTS_NAME = Endpoint.TASK_COUNTS_NAME
TASK_STATS = Endpoint.TASK_STATS
GRIDS = Endpoint.GRIDS

#: the request thread (if any) of the attempt running in this task, so its slot outlives it
_THREAD: contextvars.ContextVar[list[concurrent.futures.Future[Any]]] = contextvars.ContextVar(
    "iceprod_exporter_request_thread"
)


def _now() -> float:
    return asyncio.get_running_loop().time()


class ApiError(Exception):
    """A call that failed for good; ``reason`` is a bounded metric label."""

    def __init__(self, endpoint: str, reason: Reason, detail: str, status: int | None = None):
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


class _TrackedSession(FuturesSession):  # type: ignore[misc]  # untyped library
    """A FuturesSession that tells the running attempt which worker thread serves it."""

    def request(self, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = super().request(*args, **kwargs)
        holder = _THREAD.get(None)
        if holder is not None:
            holder.append(future)
        return future


class _RestSession(RestClient):
    """rest-tools' client with its session replaced: no urllib3 retries and a sized pool.

    rest-tools retries 5xx inside urllib3 and then raises ``RetryError`` without the response,
    which hides the status and Retry-After; retries are done above, where they can be seen.
    """

    def __init__(self, address: str, workers: int, **kwargs: Any) -> None:
        self._workers = workers
        super().__init__(address, **kwargs)

    def open(self, sync: bool = False) -> requests.Session:
        session: requests.Session = _TrackedSession(max_workers=self._workers)
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=self._workers, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers.update({"Content-Type": "application/json"})
        self.session = session
        return session


_BY_STATUS = {
    401: Reason.UNAUTHORIZED,
    403: Reason.FORBIDDEN,
    404: Reason.NOT_FOUND,
    429: Reason.OVERLOADED,
    503: Reason.OVERLOADED,
}


def _reason(exc: BaseException) -> tuple[Reason, int | None]:
    if isinstance(exc, TokenError):
        return Reason.TOKEN, None
    if isinstance(exc, TimeoutError | requests.Timeout):
        return Reason.TIMEOUT, None
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status in _BY_STATUS:
            return _BY_STATUS[status], status
        return (Reason.SERVER_ERROR if status >= 500 else Reason.CLIENT_ERROR), status
    if isinstance(exc, requests.ConnectionError):
        # rest-tools/urllib3 report read timeouts as ConnectionError
        timed_out = "timed out" in str(exc).lower()
        return (Reason.TIMEOUT if timed_out else Reason.CONNECTION), None
    return Reason.BAD_RESPONSE, None


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
        route = template.format(**path)
        refreshed = False
        attempt = 0
        while True:
            try:
                return await self._attempt(template, route, args, deadline)
            except ApiError as error:
                if error.reason == Reason.UNAUTHORIZED and not refreshed:
                    refreshed = True
                    await self._drop_token()
                    continue
                if error.reason not in RETRYABLE or attempt >= self._retries:
                    raise
                attempt += 1
                delay = self._backoff(attempt, error)
                if deadline is not None and _now() + delay >= deadline:
                    raise  # the retry would end past the poll's deadline
                await self._sleep(delay)

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

    async def _attempt(
        self, template: str, route: str, args: dict[str, str] | None, deadline: float | None
    ) -> Any:
        telemetry = self._telemetry
        telemetry.in_flight.inc()
        try:
            await self._take_slot(template, deadline)
            thread: list[concurrent.futures.Future[Any]] = []
            context = _THREAD.set(thread)
            try:
                return await self._send(template, route, args, deadline)
            finally:
                _THREAD.reset(context)
                self._give_slot(thread)
        finally:
            telemetry.in_flight.dec()

    async def _take_slot(self, template: str, deadline: float | None) -> None:
        """Wait for a free worker and the rate limiter, no longer than ``deadline``."""
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
                template, Reason.DEADLINE, "no free worker before the deadline"
            ) from None

    def _give_slot(self, thread: list[concurrent.futures.Future[Any]]) -> None:
        if not thread or thread[0].done():
            self._slots.release()
            return
        # the worker thread still waits on IceProd: its slot stays taken until the thread is
        # free, so threads and sockets never exceed `concurrency` however long IceProd hangs,
        # and a queued request's own timeout only starts once a worker can serve it
        loop = asyncio.get_running_loop()

        def release(_: concurrent.futures.Future[Any]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed: nothing waits
                loop.call_soon_threadsafe(self._slots.release)

        thread[0].add_done_callback(release)

    async def _send(
        self, template: str, route: str, args: dict[str, str] | None, deadline: float | None
    ) -> Any:
        telemetry = self._telemetry
        telemetry.requests.labels(template).inc()
        self.sent += 1
        budget = self._timeout if deadline is None else min(self._timeout, deadline - _now())
        started = time.perf_counter()
        try:
            async with asyncio.timeout(max(budget, 0.0)):
                await self._tokens.ensure_fresh()
                return await self._rest.request("GET", route, args)
        except Exception as exc:
            reason, status = _reason(exc)
            if reason == Reason.TIMEOUT and budget < self._timeout:
                reason = Reason.DEADLINE
            raise self._failed(template, reason, type(exc).__name__, status) from exc
        finally:
            telemetry.request_duration.labels(template).observe(time.perf_counter() - started)
            self._on_response()

    def _failed(
        self, template: str, reason: Reason, detail: str, status: int | None = None
    ) -> ApiError:
        self._telemetry.request_failures.labels(template, reason).inc()
        return ApiError(template, reason, detail, status)

    def bad_response(self, template: str, detail: str) -> ApiError:
        """Count and return the error for a body that is JSON but not the shape expected."""
        return self._failed(template, Reason.BAD_RESPONSE, detail)
