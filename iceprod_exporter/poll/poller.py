"""The Poller: one cycle discovers datasets, fetches what the plan says under a deadline, swaps.

A cycle is three steps, so the rules of what to read and what to expose can be tested without
I/O: :func:`~.plan.plan` (pure: which datasets to count this cycle), the fan-out here (the only
I/O, bounded by the poll's deadline) and :func:`~.assemble.assemble` (pure: the next snapshot and
the poller's bookkeeping). The bookkeeping (:class:`~.schedule.Tracking`) stays with the poller;
the snapshot holds only what is exposed. Each cycle ends in telemetry, log lines and one
:class:`~.report.CycleReport` handed to ``on_report``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

import structlog

from iceprod_exporter.exposition.telemetry import Telemetry
from iceprod_exporter.model.snapshot import (
    ACTIVE_TASK_STATUSES,
    RESOURCES,
    Counts,
    Snapshot,
    frozen_map,
)
from iceprod_exporter.poll import parse
from iceprod_exporter.poll.assemble import FetchResult, assemble
from iceprod_exporter.poll.plan import Fetch, Plan, plan
from iceprod_exporter.poll.progress import Progress
from iceprod_exporter.poll.report import CycleReport, Tally
from iceprod_exporter.poll.schedule import Schedule, Tracking
from iceprod_exporter.source.client import ApiError
from iceprod_exporter.source.labels import Endpoint, Reason, ValueField

log = structlog.get_logger(__name__)
T = TypeVar("T")


class Source(Protocol):
    """Where the poller reads IceProd from (:class:`~iceprod_exporter.source.client.ApiClient`)."""

    sent: int  # requests sent so far

    async def get(
        self,
        template: str,
        args: dict[str, str] | None = None,
        *,
        deadline: float | None = None,
        **path: str,
    ) -> Any:
        """GET a route by endpoint template, failing with reason ``deadline`` past ``deadline``."""
        ...

    def bad_response(self, template: str, detail: str) -> ApiError:
        """Count and return the error for a body of the wrong shape."""
        ...


class Poller:
    """Owns the current snapshot; :meth:`poll` replaces it with a newer one.

    ``publish`` is awaited with each new snapshot before it is swapped in (the daemon renders
    the exposition there, so no scrape waits for a render). ``on_report`` is handed each cycle's
    report once, when the cycle has ended.
    """

    def __init__(
        self,
        client: Source,
        schedule: Schedule,
        telemetry: Telemetry,
        clock: Callable[[], float] = time.time,
        publish: Callable[[Snapshot], Awaitable[None]] | None = None,
        progress: Progress | None = None,
        on_report: Callable[[CycleReport], None] | None = None,
    ) -> None:
        self._client = client
        self._schedule = schedule
        self._telemetry = telemetry
        self._clock = clock
        self._publish = publish
        self.on_report = on_report
        self.snapshot = Snapshot()
        self.tracking: Mapping[str, Tracking] = frozen_map({})
        self.progress = progress or Progress(clock)
        self.consecutive_failures = 0
        self.consecutive_crashes = 0
        #: endpoints and fields already warned of (one log line when a problem starts)
        self._denied: set[str] = set()
        self._rejected: set[ValueField] = set()

    async def poll(self, full: bool = False) -> Snapshot:
        """Run one cycle and publish its snapshot; ``full`` fetches everything now.

        Never raises (but for cancellation): an unexpected error makes a failed poll.
        """
        started = time.perf_counter()
        previous = self.snapshot
        tally = Tally()
        sent = self._client.sent
        try:
            snapshot, tracking = await self._cycle(previous, full, tally)
        except Exception as exc:
            tally.crashed = True
            tally.fatal = f"unexpected error: {type(exc).__name__}"
            log.exception("poll.crashed", error=type(exc).__name__)
            snapshot, tracking = self._failed(previous), self.tracking
        if self._publish is not None:
            try:
                await self._publish(snapshot)
            except Exception as exc:
                log.exception("poll.publish_failed", error=type(exc).__name__)
        self.snapshot, self.tracking = snapshot, tracking  # the one swap scrapes see
        tally.requests = self._client.sent - sent
        self._finish(snapshot, tally, time.perf_counter() - started)
        return snapshot

    def _failed(self, previous: Snapshot) -> Snapshot:
        return dataclasses.replace(
            previous, up=False, polled_at=self._clock(), cycle=previous.cycle + 1
        )

    async def _cycle(
        self, previous: Snapshot, full: bool, tally: Tally
    ) -> tuple[Snapshot, Mapping[str, Tracking]]:
        now = self._clock()
        deadline = asyncio.get_running_loop().time() + self._schedule.poll_timeout
        query = {"keys": "|".join(parse.DATASET_KEYS)}
        try:
            # the decoded body is not kept: only its rows
            body = await self._client.get(Endpoint.DATASETS, query, deadline=deadline)
            rows = parse.datasets(body, tally.rejects)
            del body
        except ApiError as error:
            tally.failed(error)
            return self._failed(previous), self.tracking
        except parse.BadResponse as exc:
            tally.failed(self._client.bad_response(Endpoint.DATASETS, str(exc)))
            return self._failed(previous), self.tracking
        work = plan(previous, self.tracking, rows, self._schedule, now, full)
        counts = None
        if self._schedule.shard == 0:  # IceProd-wide: one shard reports it
            counts = frozen_map(Counter(row["status"] for row in rows.values()))
        # the plan holds what the rest of the cycle needs: freed now, the rows' memory takes the
        # fan-out's results instead of the heap growing by their size (120,000 objects at 10,000)
        del rows
        results, active = await self._fan_out(work, previous, tally, deadline)
        return assemble(
            previous,
            self.tracking,
            work,
            results,
            schedule=self._schedule,
            now=now,
            finished=self._clock(),
            healthy=tally.healthy,
            dataset_counts=counts,
            active_tasks=active,
        )

    async def _fan_out(
        self, work: Plan, previous: Snapshot, tally: Tally, deadline: float
    ) -> tuple[dict[str, FetchResult], Mapping[str, Counts] | None]:
        """Read every planned dataset, and the active tasks, until done or the deadline passes."""
        results: dict[str, FetchResult] = {}
        active: list[Mapping[str, Counts] | None] = [None]

        queue = iter(work.fetches)

        async def worker() -> None:
            # a few workers share one queue: a task per dataset would hold ten thousand frames
            # (and their buffers) at once, memory the allocator keeps after the poll
            for fetch in queue:
                results[fetch.dataset.dataset_id] = await self._fetch(fetch, tally, deadline)

        async def read_active() -> None:
            active[0] = await self._active_tasks(previous, tally, deadline)

        workers = min(self._schedule.workers, len(work.fetches))
        tasks = [asyncio.create_task(worker()) for _ in range(workers)]
        if self._schedule.shard == 0:  # IceProd-wide: one shard reports it
            active[0] = previous.active_tasks  # kept should the deadline cut the read
            tasks.append(asyncio.create_task(read_active()))
        if tasks:
            await self._until_deadline(tasks, tally, deadline)
        return results, active[0]

    async def _until_deadline(
        self, tasks: list[asyncio.Task[None]], tally: Tally, deadline: float
    ) -> None:
        """Wait for ``tasks`` until the deadline, then cancel what is left and fail the cycle."""
        remaining = deadline - asyncio.get_running_loop().time()
        _, pending = await asyncio.wait(tasks, timeout=max(remaining, 0.0))
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            tally.fatal = f"poll deadline ({self._schedule.poll_timeout:g}s) passed"
        for task in tasks:
            failure = None if task.cancelled() else task.exception()
            if failure is not None:
                raise failure  # a bug, not an answer: the poll fails

    async def _active_tasks(
        self, previous: Snapshot, tally: Tally, deadline: float
    ) -> Mapping[str, Counts] | None:
        """IceProd-wide active tasks by resource (shard 0 only).

        Two aggregations of ``/task_counts/status`` with its ``gpu`` filter, which the status
        index keeps cheap.
        """
        by_resource: dict[str, Counts] = {}
        statuses = "|".join(ACTIVE_TASK_STATUSES)
        try:
            for resource in RESOURCES:
                args = {"status": statuses, "gpu": "true" if resource == "gpu" else "false"}
                read = await self._read(
                    Endpoint.ACTIVE_TASKS, parse.active_tasks, tally, deadline, args=args
                )
                if read is None:
                    return None  # dropped and counted: no half answer
                by_resource[resource] = read
        except ApiError as error:
            tally.failed(error)
            return None if error.reason == Reason.FORBIDDEN else previous.active_tasks
        return frozen_map(by_resource)

    async def _fetch(self, fetch: Fetch, tally: Tally, deadline: float) -> FetchResult:
        tally.fetched += 1
        path = {"dataset_id": fetch.dataset.dataset_id}
        result = FetchResult()
        try:
            jobs = await self._read(Endpoint.JOB_COUNTS, parse.counts, tally, deadline, path)
            tasks = await self._read(
                Endpoint.TASK_COUNTS_NAME, parse.name_counts, tally, deadline, path
            )
            held = fetch.dataset
            result = FetchResult(
                jobs=_held(jobs, held.jobs), tasks=_held(tasks, held.tasks), counted=True
            )
            if fetch.stats:
                stats = await self._read(
                    Endpoint.TASK_STATS, parse.task_stats, tally, deadline, path
                )
                result = dataclasses.replace(
                    result, stats=_held(stats, held.task_stats), stats_read=True
                )
        except ApiError as error:
            tally.failed(error)
            log.debug("dataset.failed", dataset=fetch.dataset.label, error=str(error))
            result = dataclasses.replace(result, error=error)
        return result

    async def _read(
        self,
        template: Endpoint,
        parser: Callable[[Any, str, parse.Rejects], T],
        tally: Tally,
        deadline: float,
        path: Mapping[str, str] | None = None,
        args: dict[str, str] | None = None,
    ) -> T:
        body = await self._client.get(template, args, deadline=deadline, **(path or {}))
        try:
            return parser(body, template, tally.rejects)
        except parse.BadResponse as exc:
            raise self._client.bad_response(template, str(exc)) from None

    def _finish(self, snapshot: Snapshot, tally: Tally, duration: float) -> None:
        """Telemetry, log lines and counters of the ended cycle; its report handed on."""
        self._observe(snapshot, duration)
        self._note_denied(tally.denied)
        self._note_rejects(tally.rejects)
        report = tally.report(finished_at=self._clock(), up=snapshot.up, duration=duration)
        self._count(report)
        if self.on_report is not None:
            self.on_report(report)
        log.info(
            "poll.finished",
            up=snapshot.up,
            cycle=snapshot.cycle,
            datasets=len(snapshot.datasets),
            watched=len(snapshot.watched()),
            fetched=report.fetched,
            requests=report.requests,
            failures=dict(report.failures),
            bad_values=dict(tally.rejects.counts),
            error=report.error,
            duration=round(duration, 3),
        )

    def _observe(self, snapshot: Snapshot, duration: float) -> None:
        """The cycle's duration and the state of the watched set, as telemetry."""
        telemetry = self._telemetry
        telemetry.poll_duration.observe(duration)
        watched = snapshot.watched()
        telemetry.datasets_watched.set(len(watched))
        telemetry.forbidden_datasets.set(sum(t.forbidden for t in self.tracking.values()))
        counted = [d.counted_at for d in watched if d.counted_at is not None]
        telemetry.oldest_count.set(min(counted, default=snapshot.polled_at or 0.0))

    def _note_denied(self, denied: Counter[str]) -> None:
        """403 answers by route, as telemetry; a log line for each route that starts refusing."""
        for endpoint in self._denied | set(denied):
            self._telemetry.permission_denied.labels(endpoint).set(denied[endpoint])
        for endpoint in set(denied) - self._denied:
            # one line per route that starts refusing, not one per dataset and poll
            log.warning(
                "permission.denied",
                endpoint=endpoint,
                answers=denied[endpoint],
                hint="the token may not read this route; this is not an outage",
            )
        self._denied = set(denied)

    def _note_rejects(self, rejects: parse.Rejects) -> None:
        """Dropped values by field, as telemetry; a log line for each field that starts failing."""
        for value_field, n in rejects.counts.items():
            self._telemetry.bad_values.labels(value_field).inc(n)
        for value_field in set(rejects.counts) - self._rejected:
            # one line when a field starts arriving unfit, not one per dataset and poll
            log.warning(
                "values.dropped",
                field=value_field.value,
                count=rejects.counts[value_field],
                example=rejects.examples[value_field],
                hint="IceProd sent values the exposition cannot carry; only they are dropped",
            )
        self._rejected = set(rejects.counts)

    def _count(self, report: CycleReport) -> None:
        """Crashes and failures in a row (backoff and health), and their counters."""
        if report.crashed:
            self.consecutive_crashes += 1
            self._telemetry.poll_crashes.inc()
        else:
            self.consecutive_crashes = 0
            self.progress.mark()  # a crashing poller is not making progress
        if report.up:
            self.consecutive_failures = 0
        else:
            self.consecutive_failures += 1
            self._telemetry.poll_failures.inc()


def _held(read: T, held: T | None) -> T:
    """What was just ``read``, as the object already ``held`` when they are equal.

    The new one is garbage at once, rather than at the end of the cycle: the cycle's peak, which
    the allocator keeps, stays lower.
    """
    return held if held is not None and read == held else read
