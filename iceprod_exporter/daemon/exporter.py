"""The exporter: its parts wired from settings, run and supervised until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable

import structlog
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
)

from iceprod_exporter import __version__
from iceprod_exporter.config import ConfigError, Settings, redact_url
from iceprod_exporter.daemon.health import HealthRules
from iceprod_exporter.daemon.overview import PollHistory, overview, why_failed
from iceprod_exporter.daemon.scheduling import Jobs
from iceprod_exporter.exposition.encoding import SnapshotEncoder
from iceprod_exporter.exposition.formats import CONTENT_TYPES, Format, own_metrics_part
from iceprod_exporter.exposition.telemetry import Telemetry
from iceprod_exporter.http.negotiation import negotiate
from iceprod_exporter.http.server import BindError
from iceprod_exporter.logs import register_secret
from iceprod_exporter.memory import release_freed_memory
from iceprod_exporter.model.snapshot import Snapshot
from iceprod_exporter.model.status import Status
from iceprod_exporter.poll.poller import Poller
from iceprod_exporter.poll.progress import Progress
from iceprod_exporter.poll.schedule import Schedule
from iceprod_exporter.serving.local import LocalExposition, LocalStore
from iceprod_exporter.serving.parent import ServerExited, ServingProcess
from iceprod_exporter.serving.protocol import ServingOptions
from iceprod_exporter.source.auth import (
    TOKEN_BACKOFF_MAX,
    TokenError,
    TokenManager,
    grant_from_settings,
)
from iceprod_exporter.source.client import ApiClient

log = structlog.get_logger(__name__)


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
        self.client = _client(settings, self.tokens, self.telemetry, self.progress)
        self.polls = PollHistory()
        self.poller = Poller(
            self.client,
            _schedule(settings),
            self.telemetry,
            clock,
            publish=self._publish,
            progress=self.progress,
            on_report=self.polls.add,
        )
        self.encoder = SnapshotEncoder(
            max_staleness=settings.max_staleness, compat=settings.compat_dataset_monitor
        )
        # used without a serving process (``once``, tests): encoded once per snapshot
        self.metrics = LocalExposition(
            self.registry, LocalStore(lambda: self.poller.snapshot, self.encoder, clock)
        )
        self.health = HealthRules(
            settings.health_stall_polls, settings.poll_interval, settings.poll_timeout
        )
        self.http: ServingProcess | None = None
        self._serving_exited = False
        self._running: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    def status(self) -> Status:
        """Liveness, readiness and the landing page's details, from memory only."""
        now = self._clock()
        poller = self.poller
        live, live_reason = self.health.liveness(
            quiet_for=now - self.progress.at,
            crashes=poller.consecutive_crashes,
            why=why_failed(self.polls.reports),
        )
        ready, ready_reason = self.health.readiness(poller.snapshot)
        details = overview(self.settings, poller.snapshot, self.tokens, self.polls, now)
        return Status(live, live_reason, ready, ready_reason, details)

    async def once(self) -> Snapshot:
        """One full poll (counts and task_stats of every watched dataset)."""
        try:
            return await self.poller.poll(full=True)
        finally:
            self.client.close()

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """What /metrics serves (identity), for ``once`` and tests."""
        fmt = negotiate(accept)
        return self.metrics.body(fmt), CONTENT_TYPES[fmt]

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
            http.start(self.encoder.stale_after(snapshot), self.encoder.parts(snapshot))
        except BindError as exc:
            raise ConfigError(f"{exc.setting}: {exc.message}") from None
        self.http = http
        return http

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
        jobs = Jobs(
            self.settings.poll_interval,
            self.poller.poll,
            lambda: self.poller.consecutive_failures,
            self._check_token,
        )
        jobs.start()
        try:
            await stop.wait()
        finally:
            jobs.shutdown()
            http.stop()
            self.client.close()
            log.info("exporter.stopped")
        if self._serving_exited:
            raise ServerExited("the HTTP serving process exited; stopping")

    def _heartbeat(self) -> tuple[dict[Format, bytes], Status]:
        return {fmt: own_metrics_part(self.registry, fmt) for fmt in Format}, self.status()

    def _serving_ended(self) -> None:
        self._serving_exited = True
        if self._running is not None:
            loop, stop = self._running
            loop.call_soon_threadsafe(stop.set)

    async def _publish(self, snapshot: Snapshot) -> None:
        # encoded off the loop and before the swap, so no scrape waits for an encoding
        await asyncio.to_thread(self._encode, snapshot)

    def _encode(self, snapshot: Snapshot) -> None:
        if self.http is not None:  # served by the child, which keeps the bytes
            self.http.publish(self.encoder.stale_after(snapshot), self.encoder.parts(snapshot))
            release_freed_memory()  # the poll's and the encoding's buffers
        else:
            self.metrics.store.store(snapshot)

    async def _check_token(self) -> None:
        with contextlib.suppress(TokenError):  # counted and logged by the token manager
            await self.tokens.ensure_fresh()


def _client(
    settings: Settings, tokens: TokenManager, telemetry: Telemetry, progress: Progress
) -> ApiClient:
    return ApiClient(
        settings.api_url,
        tokens,
        telemetry,
        timeout=settings.timeout,
        retries=settings.retries,
        backoff_max=settings.backoff_max,
        concurrency=settings.concurrency,
        rate_limit=settings.rate_limit,
        max_response_size=settings.max_response_size,
        on_response=progress.mark,
    )


def _schedule(settings: Settings) -> Schedule:
    return Schedule(
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
    )
