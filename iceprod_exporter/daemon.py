"""Wires settings, tokens, API client, poller, collector and HTTP server into the exporter."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import signal
import time
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
from .api import ApiClient
from .auth import TokenError, TokenManager, grant_from_settings
from .collector import RenderedSnapshot, SnapshotCollector
from .config import ConfigError, Settings
from .logs import register_secret
from .poller import Poller, Schedule
from .server import HttpServer, Status, make_app, render_metrics
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
        self.tokens = TokenManager(grant_from_settings(settings), self.telemetry, clock)
        self.client = ApiClient(
            settings.api_url,
            self.tokens,
            self.telemetry,
            timeout=settings.timeout,
            retries=settings.retries,
            backoff_max=settings.backoff_max,
            concurrency=settings.concurrency,
            rate_limit=settings.rate_limit,
            on_response=lambda: self.poller.mark_progress(),
        )
        self.poller = Poller(
            self.client,
            Schedule(
                poll_interval=settings.poll_interval,
                slow_poll_factor=settings.slow_poll_factor,
                task_stats_interval=settings.task_stats_interval,
                grace_period=settings.grace_period,
                shard=settings.shard,
                total_shards=settings.total_shards,
            ),
            self.telemetry,
            clock,
        )
        # not registered: the snapshot part of /metrics is rendered once per snapshot
        self.rendered = RenderedSnapshot(
            SnapshotCollector(
                lambda: self.poller.snapshot,
                max_staleness=settings.max_staleness,
                compat=settings.compat_dataset_monitor,
                clock=clock,
            )
        )
        self.started_at = clock()
        self.http: HttpServer | None = None

    # --- health

    def status(self) -> Status:
        """Liveness, readiness and the landing page's details, from memory only."""
        s = self.settings
        now = self._clock()
        stall = s.health_stall_polls * s.poll_interval + s.timeout
        quiet = now - self.poller.progress_at
        snapshot = self.poller.snapshot
        return Status(
            live=quiet <= stall,
            live_reason=(
                f"ok: poller progressed {quiet:.0f}s ago"
                if quiet <= stall
                else f"stalled: no poll progress for {quiet:.0f}s (limit {stall:.0f}s)"
            ),
            ready=snapshot.last_success is not None,
            ready_reason=(
                "ok: first poll succeeded"
                if snapshot.last_success is not None
                else "waiting for the first successful poll"
            ),
            details=self._details(snapshot, now),
        )

    def _details(self, snapshot: Snapshot, now: float) -> dict[str, object]:
        def ago(t: float | None) -> str:
            return "never" if t is None else f"{now - t:.1f}s ago"

        token_error = self.tokens.last_error
        return {
            "version": __version__,
            "IceProd API": self.settings.api_url,
            "auth mode": self.settings.effective_auth_mode().value,
            "IceProd up (last poll)": snapshot.up,
            "last poll": ago(snapshot.polled_at),
            "last successful poll": ago(snapshot.last_success),
            "poll cycles": snapshot.cycle,
            "datasets watched": len(snapshot.watched()),
            "datasets exposed": len(snapshot.datasets),
            "token": "ok" if token_error is None else f"failing: {token_error}",
            "settings": self.settings.redacted(),
        }

    # --- running

    async def once(self) -> Snapshot:
        """One full poll (counts and task_stats of every watched dataset)."""
        try:
            return await self.poller.poll(full=True)
        finally:
            self.client.close()

    def start_http(self) -> HttpServer:
        """Start the HTTP server in its own thread."""
        address, port = self.settings.listen_address, self.settings.port
        try:
            self.http = HttpServer(
                make_app(self.registry, self.rendered, self.status), address, port
            )
        except OSError as exc:
            raise ConfigError(f"port: cannot listen on {address}:{port}: {exc.strerror}") from None
        self.http.start()
        return self.http

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Poll on schedule and serve HTTP until ``stop`` is set or SIGTERM/SIGINT arrives."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        http = self.http or self.start_http()
        log.info(
            "exporter.started",
            version=__version__,
            url=f"http://{self.settings.listen_address}:{http.port}/",
            api_url=self.settings.api_url,
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

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """What /metrics serves, for ``once`` and tests."""
        return render_metrics(self.registry, self.rendered, accept)

    async def _poll_job(self) -> None:
        try:
            snapshot = await self.poller.poll()
        except Exception:  # a bug in one cycle must not end polling
            log.exception("poll.crashed")
            return
        # render the new snapshot now, off the loop, so the next scrape finds it ready
        await asyncio.to_thread(self.exposition)
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
