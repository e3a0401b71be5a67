"""Wires settings, tokens, API client, poller, collector and HTTP server into the exporter."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import signal
import time
from collections import Counter
from collections.abc import Callable

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
)

from . import __version__
from .allocator import release_freed_memory
from .api import ApiClient
from .auth import TOKEN_BACKOFF_MAX, TokenError, TokenManager, grant_from_settings
from .collector import (
    CONTENT_TYPES,
    Exposition,
    Format,
    RenderedSnapshot,
    SnapshotCollector,
    live_part,
)
from .config import ConfigError, Settings, redact_url
from .logs import register_secret
from .poller import Poller, Progress, Schedule
from .server import BindError, Status, negotiate
from .serving import ServerExited, ServingOptions, ServingProcess
from .snapshot import Snapshot
from .telemetry import Telemetry

log = structlog.get_logger(__name__)

#: how often the token job checks whether the access token is due for refresh (no I/O otherwise)
TOKEN_CHECK_SECONDS = 1.0
#: first retry delay after a failed poll; doubles up to poll_interval
OUTAGE_BACKOFF_START = 2.0


class Exporter:
    """The exporter's parts, built from settings; ``run`` serves until stopped."""

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        settings.require_api()
        for secret in (settings.oauth_client_secret, settings.token):
            register_secret(secret.get_secret_value() if secret else None)
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        if settings.process_metrics:
            for collector in (PROCESS_COLLECTOR, GC_COLLECTOR, PLATFORM_COLLECTOR):
                self.registry.register(collector)
        self._clock = clock
        self.telemetry = Telemetry(self.registry)
        self.tokens = TokenManager(
            grant_from_settings(settings),
            self.telemetry,
            clock,
            backoff_max=min(TOKEN_BACKOFF_MAX, settings.poll_interval),
        )
        self.progress = Progress(clock)
        self.client = ApiClient(
            settings.api_url,
            self.tokens,
            self.telemetry,
            timeout=settings.timeout,
            retries=settings.retries,
            backoff_max=settings.backoff_max,
            concurrency=settings.concurrency,
            rate_limit=settings.rate_limit,
            max_response_size=settings.max_response_size,
            on_response=self.progress.mark,
        )
        # not registered: the snapshot part of /metrics is rendered once per snapshot
        self.rendered = RenderedSnapshot(
            SnapshotCollector(
                lambda: poller.snapshot,
                max_staleness=settings.max_staleness,
                compat=settings.compat_dataset_monitor,
                clock=clock,
            )
        )
        self.metrics = Exposition(self.registry, self.rendered)
        self.http: ServingProcess | None = None
        self._serving_exited = False
        self._running: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        poller = self.poller = Poller(
            self.client,
            Schedule(
                poll_interval=settings.poll_interval,
                slow_poll_factor=settings.slow_poll_factor,
                task_stats_interval=settings.task_stats_interval,
                grace_period=settings.grace_period,
                poll_timeout=settings.poll_timeout,
                quiet_after_polls=settings.quiet_after_polls,
                quiet_poll_interval=settings.quiet_poll_interval,
                shard=settings.shard,
                total_shards=settings.total_shards,
                workers=settings.concurrency,
            ),
            self.telemetry,
            clock,
            publish=self._prepare,
            progress=self.progress,
        )

    # --- health

    def status(self) -> Status:
        """Liveness, readiness and the landing page's details, from memory only."""
        s = self.settings
        now = self._clock()
        stall = s.health_stall_polls * s.poll_interval + s.poll_timeout
        quiet = now - self.progress.at
        crashes = self.poller.consecutive_crashes
        snapshot = self.poller.snapshot
        if crashes >= s.health_stall_polls:
            live, live_reason = False, f"failing: the last {crashes} polls crashed ({self._why()})"
        elif quiet > stall:
            live = False
            live_reason = f"stalled: no poll progress for {quiet:.0f}s (limit {stall:.0f}s)"
        else:
            live, live_reason = True, f"ok: poller progressed {quiet:.0f}s ago"
        return Status(
            live=live,
            live_reason=live_reason,
            ready=snapshot.last_success is not None,
            ready_reason=(
                "ok: first poll succeeded"
                if snapshot.last_success is not None
                else "waiting for the first successful poll"
            ),
            details=self._details(snapshot, now),
        )

    def _why(self) -> str:
        history = self.poller.history
        return (history[0].error if history else None) or "no error recorded"

    def _details(self, snapshot: Snapshot, now: float) -> dict[str, object]:
        def ago(t: float | None) -> str:
            return "never" if t is None else f"{now - t:.1f}s ago"

        token_error = self.tokens.last_error
        return {
            "version": __version__,
            "IceProd API": redact_url(self.settings.api_url),
            "auth mode": self.settings.effective_auth_mode().value,
            "IceProd up (last poll)": snapshot.up,
            "why the last poll failed": (
                "-" if snapshot.up or not self.poller.history else self._why()
            ),
            "last poll": ago(snapshot.polled_at),
            "last successful poll": ago(snapshot.last_success),
            "poll cycles": snapshot.cycle,
            "datasets watched": len(snapshot.watched()),
            "datasets exposed": len(snapshot.datasets),
            "datasets by status": dict(
                sorted(Counter(d.status for d in snapshot.watched()).items())
            ),
            "token": {
                "state": "ok" if token_error is None else f"failing: {token_error}",
                "expires": (
                    f"in {self.tokens.expires_at - now:.0f}s"
                    if self.tokens.expires_at
                    else "unknown (no exp)"
                ),
            },
            "last polls": [
                {
                    "finished": ago(record.finished_at),
                    "up": record.up,
                    "duration (s)": round(record.duration, 3),
                    "requests": record.requests,
                    "datasets fetched": record.fetched,
                    "failures": dict(record.failures) or "-",
                    "error": record.error or "-",
                }
                for record in self.poller.history
            ],
            "last error by endpoint": {
                endpoint: {
                    "reason": error.reason,
                    "status": error.status if error.status is not None else "-",
                    "when": ago(error.at),
                }
                for endpoint, error in sorted(self.poller.endpoint_errors.items())
            },
            "settings": self.settings.redacted(),
        }

    # --- running

    async def once(self) -> Snapshot:
        """One full poll (counts and task_stats of every watched dataset)."""
        try:
            return await self.poller.poll(full=True)
        finally:
            self.client.close()

    def start_http(self) -> ServingProcess:
        """Start the HTTP(S) server in its own process (web config: TLS, basic auth, headers)."""
        s = self.settings
        s.check_web_config()  # one clear line now, not from the child
        options = ServingOptions(
            s.listen_address,
            s.port,
            str(s.web_config_file) if s.web_config_file else None,
            s.log_level,
            s.log_format,
        )
        http = ServingProcess(options, self._heartbeat, on_exit=self._serving_ended)
        try:
            snapshot = self.poller.snapshot
            http.start(self.rendered.stale_after(snapshot), self.rendered.parts(snapshot))
        except BindError as exc:
            raise ConfigError(f"{exc.setting}: {exc.message}") from None
        self.http = http
        return http

    def _heartbeat(self) -> tuple[dict[Format, bytes], Status]:
        return {fmt: live_part(self.registry, fmt) for fmt in Format}, self.status()

    def _serving_ended(self) -> None:
        self._serving_exited = True
        if self._running is not None:
            loop, stop = self._running
            loop.call_soon_threadsafe(stop.set)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Poll on schedule and serve HTTP until ``stop`` is set or SIGTERM/SIGINT arrives."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        self._running = (loop, stop)
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        http = self.http or self.start_http()
        log.info(
            "exporter.started",
            version=__version__,
            url=f"{http.scheme}://{self.settings.listen_address}:{http.port}/",
            api_url=redact_url(self.settings.api_url),
            poll_interval=self.settings.poll_interval,
        )
        scheduler = AsyncIOScheduler()
        now = datetime.datetime.now(datetime.UTC)
        scheduler.add_job(
            self._poll_job,
            IntervalTrigger(seconds=self.settings.poll_interval),
            id="poll",
            next_run_time=now,
            max_instances=1,  # never two cycles at once
            coalesce=True,
            misfire_grace_time=None,
        )
        scheduler.add_job(
            self._token_job,
            IntervalTrigger(seconds=TOKEN_CHECK_SECONDS),
            id="token",
            next_run_time=now,
            max_instances=1,
            coalesce=True,
        )
        self._scheduler = scheduler
        scheduler.start()
        try:
            await stop.wait()
        finally:
            scheduler.shutdown(wait=False)
            http.stop()
            self.client.close()
            log.info("exporter.stopped")
        if self._serving_exited:
            raise ServerExited("the HTTP serving process exited; stopping")

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """What /metrics serves (identity), for ``once`` and tests."""
        fmt = negotiate(accept)
        return self.metrics.body(fmt), CONTENT_TYPES[fmt]

    async def _prepare(self, snapshot: Snapshot) -> None:
        # rendered off the loop and before the swap, so no scrape waits for a render
        await asyncio.to_thread(self._render, snapshot)

    def _render(self, snapshot: Snapshot) -> None:
        if self.http is not None:  # served by the child, which keeps the bytes
            self.http.publish(self.rendered.stale_after(snapshot), self.rendered.parts(snapshot))
            release_freed_memory()  # the poll's and the encoding's buffers
        else:
            self.rendered.prepare(snapshot)

    async def _poll_job(self) -> None:
        try:
            snapshot = await self.poller.poll()  # never raises: a crashed cycle is a failed poll
        except asyncio.CancelledError:
            return  # shutting down mid-poll: nothing to report
        if not snapshot.up:
            failures = self.poller.consecutive_failures
            delay = min(self.settings.poll_interval, OUTAGE_BACKOFF_START * 2 ** (failures - 1))
            self._scheduler.modify_job(
                "poll",
                next_run_time=datetime.datetime.now(datetime.UTC)
                + datetime.timedelta(seconds=delay),
            )

    async def _token_job(self) -> None:
        with contextlib.suppress(TokenError):  # counted and logged by the token manager
            await self.tokens.ensure_fresh()
