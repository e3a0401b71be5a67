"""One poll cycle: discover datasets, plan what to fetch, fetch it, assemble the next snapshot.

The cycle is three steps, so the rules of what to read and what to expose can be tested without
I/O: :func:`plan` (pure: which datasets to count this cycle), the fan-out (the only I/O, bounded by
the poll's deadline) and :func:`assemble` (pure: the next snapshot and the poller's bookkeeping).
The bookkeeping (:class:`Tracking`) stays with the poller; the snapshot holds only what is exposed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import structlog

from iceprod_exporter.exposition.telemetry import Telemetry
from iceprod_exporter.model.snapshot import (
    ACTIVE_TASK_STATUSES,
    RESOURCES,
    Counts,
    Dataset,
    Snapshot,
    TaskStats,
    frozen_map,
)
from iceprod_exporter.poll import parse
from iceprod_exporter.source.client import ApiError
from iceprod_exporter.source.labels import DATASET_PROBLEMS, Endpoint, Reason, ValueField

log = structlog.get_logger(__name__)
T = TypeVar("T")

#: statuses counted on the slow cadence; ``complete`` is only counted once, when it is reached
SLOW_STATUSES = frozenset({"suspended", "errors"})
#: how many past cycles the landing page shows
HISTORY = 10


def _digest(dataset_id: str) -> bytes:
    return hashlib.sha256(dataset_id.encode("utf-8", "surrogatepass")).digest()


def shard_of(dataset_id: str, total_shards: int) -> int:
    """Stable shard of a dataset: the same on every replica, release and restart."""
    return int.from_bytes(_digest(dataset_id)[:8], "big") % total_shards


def phase_of(dataset_id: str) -> float:
    """Stable phase of a dataset in [0, 1): where in each slow interval it is read."""
    return int.from_bytes(_digest(dataset_id)[8:16], "big") / 2**64


class Source(Protocol):
    """Where the poller reads IceProd from (:class:`~.api.ApiClient`, or a fake in tests)."""

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


@dataclass(frozen=True)
class Schedule:
    """How often each kind of data is fetched, and how this replica shares the work."""

    poll_interval: float
    slow_poll_factor: int = 5
    task_stats_interval: float = 600.0
    grace_period: float = 900.0
    #: seconds one cycle may take before what is still outstanding is abandoned
    poll_timeout: float = 300.0
    #: unchanged reads in a row that make a processing dataset quiet (0: never quiet)
    quiet_after_polls: int = 3
    #: seconds between reads of a quiet dataset (the longest a change waits to be seen)
    quiet_poll_interval: float = 300.0
    shard: int = 0
    total_shards: int = 1
    #: datasets read at once (each reads its endpoints one after another): the client's
    #: concurrency, so every request slot is used
    workers: int = 8

    def counts_due(self, dataset: Dataset, tracking: Tracking, now: float) -> bool:
        """Whether a watched dataset's job and task counts should be read this cycle."""
        if dataset.counted_at is None:
            return True
        if dataset.status in SLOW_STATUSES:
            every = self.slow_poll_factor * self.poll_interval
        elif self.quiet(tracking):
            every = self.quiet_poll_interval
        else:
            return True
        # Read once per interval, each dataset at its own phase: thousands of datasets turn quiet
        # (or slow) in the same cycle and would otherwise all fall due together, one cycle in
        # five, that cycle several times the others' size.
        phase = phase_of(dataset.dataset_id) * every
        return (now + phase) // every > (dataset.counted_at + phase) // every

    def quiet(self, tracking: Tracking) -> bool:
        """Whether a processing dataset is read on the quiet cadence."""
        return 0 < self.quiet_after_polls <= tracking.unchanged

    def stats_due(self, dataset: Dataset, tracking: Tracking, now: float) -> bool:
        """Whether ``task_stats`` should be read along with the counts.

        Only when tasks completed since the last read: ``task_stats`` aggregates complete tasks
        alone, so it cannot have changed otherwise.
        """
        if self.task_stats_interval <= 0:
            return False
        if dataset.task_stats is None or tracking.stats_at is None:
            return True  # never read, or lost (a 403 that has cleared): restore it now
        if tracking.stats_complete is not None and completed(dataset) == tracking.stats_complete:
            return False
        return now - tracking.stats_at >= self.task_stats_interval

    def mine(self, dataset_id: str) -> bool:
        """Whether this replica polls the dataset."""
        return self.total_shards == 1 or shard_of(dataset_id, self.total_shards) == self.shard


def completed(dataset: Dataset) -> int | None:
    """The dataset's complete tasks as last counted (None before its first read)."""
    if dataset.tasks is None:
        return None
    return sum(counts.get("complete", 0) for counts in dataset.tasks.values())


@dataclass(frozen=True, slots=True)
class Tracking:
    """The poller's bookkeeping of one dataset; never exposed."""

    stats_at: float | None = None
    #: complete tasks counted when ``task_stats`` was last read
    stats_complete: int | None = None
    #: reads in a row that found the counts unchanged (quiet datasets are read less often)
    unchanged: int = 0
    #: when the dataset completed or vanished; its series go after the grace period
    retired_at: float | None = None
    #: the token may not read the dataset's routes (HTTP 403)
    forbidden: bool = False


@dataclass(frozen=True, slots=True)
class Fetch:
    """One dataset to read this cycle."""

    dataset: Dataset
    stats: bool
    #: the dataset just completed: read its final state once, then retire it
    final: bool = False


@dataclass(frozen=True)
class Plan:
    """What one cycle reads: the datasets to fetch and the ones that keep their values."""

    fetches: tuple[Fetch, ...]
    #: this shard's datasets as discovery describes them, with their last counts
    kept: Mapping[str, Dataset]
    #: datasets that left discovery this cycle or earlier (kept until the grace period ends)
    gone: frozenset[str]


@dataclass(frozen=True, slots=True)
class Fetched:
    """What the fan-out read of one dataset; unread parts stay None."""

    jobs: Counts | None = None
    tasks: Mapping[str, Counts] | None = None
    stats: Mapping[str, TaskStats] | None = None
    counted: bool = False
    stats_read: bool = False
    error: ApiError | None = None


@dataclass(frozen=True)
class PollRecord:
    """One past cycle, for the landing page."""

    finished_at: float
    up: bool
    duration: float
    requests: int
    fetched: int
    failures: Mapping[str, int]
    error: str | None


@dataclass(frozen=True)
class EndpointError:
    """The last failure of one endpoint template, for the landing page."""

    reason: str
    status: int | None
    at: float
    detail: str


@dataclass
class _Cycle:
    """Book-keeping of one cycle, for the summary event and the snapshot's ``up``."""

    fetched: int = 0
    requests: int = 0
    failures: Counter[str] = dataclasses.field(default_factory=Counter)
    #: 403 answers by endpoint template: permission problems, not outages
    denied: Counter[str] = dataclasses.field(default_factory=Counter)
    errors: dict[str, ApiError] = field(default_factory=dict)
    rejects: parse.Rejects = field(default_factory=parse.Rejects)
    #: why the whole cycle failed, if it did (the deadline passed, an unexpected error)
    fatal: str | None = None

    def failed(self, error: ApiError) -> None:
        """Count a failed call."""
        self.failures[error.reason] += 1
        self.errors[error.endpoint] = error
        if error.reason == Reason.FORBIDDEN:
            self.denied[error.endpoint] += 1

    @property
    def healthy(self) -> bool:
        """Whether IceProd answered all it should (a 403 or 404 is about one route, not IceProd)."""
        return self.fatal is None and not set(self.failures) - DATASET_PROBLEMS


def plan(
    previous: Snapshot,
    tracking: Mapping[str, Tracking],
    rows: Mapping[str, Mapping[str, Any]],
    schedule: Schedule,
    now: float,
    full: bool = False,
) -> Plan:
    """Decide what this cycle reads (pure): due datasets are fetched, the others keep values."""
    fetches: list[Fetch] = []
    kept: dict[str, Dataset] = {}
    for dataset_id, row in rows.items():
        if not schedule.mine(dataset_id):
            continue
        before = previous.datasets.get(dataset_id)
        track = tracking.get(dataset_id, Tracking())
        # discovery refreshes the metadata; the last counts and stats stay until read again
        changed = before is not None and any(getattr(before, k) != v for k, v in row.items())
        if before is None:
            current = Dataset(**row)
        elif changed:
            current = dataclasses.replace(before, **row)
        else:  # unchanged: the snapshot keeps the same objects (see _kept)
            current = before
        if current.status == "complete":
            if before is not None and track.retired_at is None and before.status != "complete":
                fetches.append(Fetch(current, stats=schedule.task_stats_interval > 0, final=True))
            elif before is not None and track.retired_at is not None:
                kept[dataset_id] = _kept(current, watched=False)
            continue  # a dataset first seen complete is counted in iceprod_datasets only
        current = _kept(current, watched=True)
        # a status or metadata change is read at once, quiet or not
        if (
            full
            or changed
            or track.retired_at is not None
            or schedule.counts_due(current, track, now)
        ):
            stats = full or schedule.stats_due(current, track, now)
            fetches.append(Fetch(current, stats=stats and schedule.task_stats_interval > 0))
        else:
            kept[dataset_id] = current
    gone = frozenset(
        dataset_id
        for dataset_id in previous.datasets
        if dataset_id not in rows and schedule.mine(dataset_id)
    )
    return Plan(tuple(fetches), frozen_map(kept), gone)


def assemble(
    previous: Snapshot,
    tracking: Mapping[str, Tracking],
    work: Plan,
    fetched: Mapping[str, Fetched],
    *,
    schedule: Schedule,
    now: float,
    finished: float,
    healthy: bool,
    dataset_counts: Counts | None,
    active_tasks: Mapping[str, Counts] | None,
) -> tuple[Snapshot, dict[str, Tracking]]:
    """Build the next snapshot and bookkeeping from a plan and what was read (pure)."""
    datasets: dict[str, Dataset] = dict(work.kept)
    tracks: dict[str, Tracking] = {
        dataset_id: tracking.get(dataset_id, Tracking()) for dataset_id in work.kept
    }
    for dataset_id in work.gone:
        track = tracking.get(dataset_id, Tracking())
        datasets[dataset_id] = dataclasses.replace(previous.datasets[dataset_id], watched=False)
        tracks[dataset_id] = dataclasses.replace(track, retired_at=track.retired_at or now)
    for job in work.fetches:
        dataset_id = job.dataset.dataset_id
        track = tracking.get(dataset_id, Tracking())
        if track.retired_at is not None and not job.final:
            track = dataclasses.replace(track, retired_at=None)  # back in the watched set
        dataset, track = _apply(job, fetched.get(dataset_id, Fetched()), track, now)
        datasets[dataset_id], tracks[dataset_id] = dataset, track
    for dataset_id, track in list(tracks.items()):
        if track.retired_at is not None and now - track.retired_at > schedule.grace_period:
            del datasets[dataset_id], tracks[dataset_id]
    snapshot = Snapshot(
        up=healthy,
        polled_at=finished,
        last_success=finished if healthy else previous.last_success,
        datasets=frozen_map(datasets),
        dataset_counts=dataset_counts,
        active_tasks=active_tasks,
        cycle=previous.cycle + 1,
    )
    return snapshot, tracks


def _held(read: T, held: T | None) -> T:
    """What was just ``read``, as the object already ``held`` when they are equal.

    The new one is garbage at once, rather than at the end of the cycle: the cycle's peak, which
    the allocator keeps, stays lower.
    """
    return held if held is not None and read == held else read


def _kept(dataset: Dataset, **changes: Any) -> Dataset:
    """``dataset`` with ``changes``: the same object when they change nothing.

    Most datasets are the same from one cycle to the next. Rebuilding them all would free the
    previous snapshot's objects between the new ones, and at 10,000 datasets those holes keep
    tens of megabytes of the allocator's pages resident.
    """
    if all(getattr(dataset, k) == v for k, v in changes.items()):
        return dataset
    return dataclasses.replace(dataset, **changes)


def _apply(job: Fetch, result: Fetched, track: Tracking, now: float) -> tuple[Dataset, Tracking]:
    dataset = job.dataset
    if result.counted:
        same = (result.jobs, result.tasks) == (dataset.jobs, dataset.tasks)
        dataset = dataclasses.replace(dataset, jobs=result.jobs, tasks=result.tasks, counted_at=now)
        track = dataclasses.replace(
            track, forbidden=False, unchanged=track.unchanged + 1 if same else 0
        )
    if result.stats_read:
        dataset = dataclasses.replace(dataset, task_stats=result.stats)
        track = dataclasses.replace(track, stats_at=now, stats_complete=completed(dataset))
    error = result.error
    if error is not None and error.reason == Reason.FORBIDDEN:
        # nothing of it may be read: drop what is held, and read it all again once allowed
        dataset = dataclasses.replace(
            dataset, jobs=None, tasks=None, task_stats=None, counted_at=None
        )
        track = Tracking(retired_at=track.retired_at, forbidden=True)
    elif error is not None and error.reason == Reason.NOT_FOUND:
        track = dataclasses.replace(track, retired_at=track.retired_at or now)
    if job.final:
        # retired whether or not the final read got through (the deadline may cut it): a
        # complete dataset is never read again, so it must not wait for one
        track = dataclasses.replace(track, retired_at=track.retired_at or now)
    if track.retired_at is not None:
        dataset = dataclasses.replace(dataset, watched=False)
    # on other failures the last values stay, until max_staleness drops them all
    return dataset, track


class Progress:
    """When the poller last showed a sign of life: an API answer arrived or a cycle ended.

    Built before the API client and the poller, which both mark it; listeners (the CLI's
    progress line) are told of every mark.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.at = clock()
        self._listeners: list[Callable[[], None]] = []

    def mark(self) -> None:
        """Note a sign of life now."""
        self.at = self._clock()
        for listener in self._listeners:
            listener()

    def listen(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` on every mark; returns the function that stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)


class Poller:
    """Owns the current snapshot; :meth:`poll` replaces it with a newer one.

    ``publish`` is awaited with each new snapshot before it is swapped in (the daemon renders
    the exposition there, so no scrape waits for a render).
    """

    def __init__(
        self,
        client: Source,
        schedule: Schedule,
        telemetry: Telemetry,
        clock: Callable[[], float] = time.time,
        publish: Callable[[Snapshot], Awaitable[None]] | None = None,
        progress: Progress | None = None,
    ) -> None:
        self._client = client
        self._schedule = schedule
        self._telemetry = telemetry
        self._clock = clock
        self._publish = publish
        self.snapshot = Snapshot()
        self.tracking: Mapping[str, Tracking] = frozen_map({})
        self.progress = progress or Progress(clock)
        self.consecutive_failures = 0
        self.consecutive_crashes = 0
        self.history: list[PollRecord] = []
        self.endpoint_errors: dict[str, EndpointError] = {}
        self._denied: set[str] = set()
        self._rejected: set[ValueField] = set()

    async def poll(self, full: bool = False) -> Snapshot:
        """Run one cycle and publish its snapshot; ``full`` fetches everything now.

        Never raises (but for cancellation): an unexpected error makes a failed poll.
        """
        started = time.perf_counter()
        previous = self.snapshot
        cycle = _Cycle()
        sent = self._client.sent
        crashed = False
        try:
            snapshot, tracking = await self._cycle(previous, full, cycle)
        except Exception as exc:
            crashed = True
            cycle.fatal = f"unexpected error: {type(exc).__name__}"
            log.exception("poll.crashed", error=type(exc).__name__)
            snapshot, tracking = self._failed(previous), self.tracking
        if self._publish is not None:
            try:
                await self._publish(snapshot)
            except Exception as exc:
                log.exception("poll.publish_failed", error=type(exc).__name__)
        self.snapshot, self.tracking = snapshot, tracking  # the one swap scrapes see
        cycle.requests = self._client.sent - sent
        self._finish(snapshot, cycle, crashed, time.perf_counter() - started)
        return snapshot

    def _failed(self, previous: Snapshot) -> Snapshot:
        return dataclasses.replace(
            previous, up=False, polled_at=self._clock(), cycle=previous.cycle + 1
        )

    async def _cycle(
        self, previous: Snapshot, full: bool, cycle: _Cycle
    ) -> tuple[Snapshot, Mapping[str, Tracking]]:
        now = self._clock()
        deadline = asyncio.get_running_loop().time() + self._schedule.poll_timeout
        query = {"keys": "|".join(parse.DATASET_KEYS)}
        try:
            # the decoded body is not kept: only its rows
            body = await self._client.get(Endpoint.DATASETS, query, deadline=deadline)
            rows = parse.datasets(body, cycle.rejects)
            del body
        except ApiError as error:
            cycle.failed(error)
            return self._failed(previous), self.tracking
        except parse.BadResponse as exc:
            cycle.failed(self._client.bad_response(Endpoint.DATASETS, str(exc)))
            return self._failed(previous), self.tracking
        work = plan(previous, self.tracking, rows, self._schedule, now, full)
        counts = None
        if self._schedule.shard == 0:  # IceProd-wide: one shard reports it
            counts = frozen_map(Counter(row["status"] for row in rows.values()))
        # the plan holds what the rest of the cycle needs: freed now, the rows' memory takes the
        # fan-out's results instead of the heap growing by their size (120,000 objects at 10,000)
        del rows
        fetched, active = await self._fan_out(work, previous, cycle, deadline)
        return assemble(
            previous,
            self.tracking,
            work,
            fetched,
            schedule=self._schedule,
            now=now,
            finished=self._clock(),
            healthy=cycle.healthy,
            dataset_counts=counts,
            active_tasks=active,
        )

    async def _fan_out(
        self, work: Plan, previous: Snapshot, cycle: _Cycle, deadline: float
    ) -> tuple[dict[str, Fetched], Mapping[str, Counts] | None]:
        """Read every planned dataset, and the active tasks, until done or the deadline passes."""
        fetched: dict[str, Fetched] = {}
        active: list[Mapping[str, Counts] | None] = [None]

        queue = iter(work.fetches)

        async def worker() -> None:
            # a few workers share one queue: a task per dataset would hold ten thousand frames
            # (and their buffers) at once, memory the allocator keeps after the poll
            for job in queue:
                fetched[job.dataset.dataset_id] = await self._fetch(job, cycle, deadline)

        async def read_active() -> None:
            active[0] = await self._active_tasks(previous, cycle, deadline)

        workers = min(self._schedule.workers, len(work.fetches))
        tasks = [asyncio.create_task(worker()) for _ in range(workers)]
        if self._schedule.shard == 0:  # IceProd-wide: one shard reports it
            active[0] = previous.active_tasks  # kept should the deadline cut the read
            tasks.append(asyncio.create_task(read_active()))
        if tasks:
            remaining = deadline - asyncio.get_running_loop().time()
            _, pending = await asyncio.wait(tasks, timeout=max(remaining, 0.0))
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
                cycle.fatal = f"poll deadline ({self._schedule.poll_timeout:g}s) passed"
            for task in tasks:
                failure = None if task.cancelled() else task.exception()
                if failure is not None:
                    raise failure  # a bug, not an answer: the poll fails
        return fetched, active[0]

    async def _active_tasks(
        self, previous: Snapshot, cycle: _Cycle, deadline: float
    ) -> Mapping[str, Counts] | None:
        """IceProd-wide active tasks by resource (shard 0 only).

        The backlog IceProd's queue_tasks schedules CPU and GPU work from, read as it reads it:
        two aggregations the status index keeps cheap.
        """
        by_resource: dict[str, Counts] = {}
        statuses = "|".join(ACTIVE_TASK_STATUSES)
        try:
            for resource in RESOURCES:
                args = {"status": statuses, "gpu": "true" if resource == "gpu" else "false"}
                read = await self._read(
                    Endpoint.ACTIVE_TASKS, parse.active_tasks, cycle, deadline, args=args
                )
                if read is None:
                    return None  # dropped and counted: no half answer
                by_resource[resource] = read
        except ApiError as error:
            cycle.failed(error)
            return None if error.reason == Reason.FORBIDDEN else previous.active_tasks
        return frozen_map(by_resource)

    async def _fetch(self, job: Fetch, cycle: _Cycle, deadline: float) -> Fetched:
        cycle.fetched += 1
        path = {"dataset_id": job.dataset.dataset_id}
        result = Fetched()
        try:
            jobs = await self._read(Endpoint.JOB_COUNTS, parse.counts, cycle, deadline, path)
            tasks = await self._read(
                Endpoint.TASK_COUNTS_NAME, parse.name_counts, cycle, deadline, path
            )
            held = job.dataset
            result = Fetched(
                jobs=_held(jobs, held.jobs), tasks=_held(tasks, held.tasks), counted=True
            )
            if job.stats:
                stats = await self._read(
                    Endpoint.TASK_STATS, parse.task_stats, cycle, deadline, path
                )
                result = dataclasses.replace(
                    result, stats=_held(stats, held.task_stats), stats_read=True
                )
        except ApiError as error:
            cycle.failed(error)
            log.debug("dataset.failed", dataset=job.dataset.label, error=str(error))
            result = dataclasses.replace(result, error=error)
        return result

    async def _read(
        self,
        template: Endpoint,
        parser: Callable[[Any, str, parse.Rejects], T],
        cycle: _Cycle,
        deadline: float,
        path: Mapping[str, str] | None = None,
        args: dict[str, str] | None = None,
    ) -> T:
        body = await self._client.get(template, args, deadline=deadline, **(path or {}))
        try:
            return parser(body, template, cycle.rejects)
        except parse.BadResponse as exc:
            raise self._client.bad_response(template, str(exc)) from None

    def _finish(self, snapshot: Snapshot, cycle: _Cycle, crashed: bool, duration: float) -> None:
        telemetry = self._telemetry
        telemetry.poll_duration.observe(duration)
        watched = snapshot.watched()
        telemetry.datasets_watched.set(len(watched))
        telemetry.forbidden_datasets.set(sum(t.forbidden for t in self.tracking.values()))
        counted = [d.counted_at for d in watched if d.counted_at is not None]
        telemetry.oldest_count.set(min(counted, default=snapshot.polled_at or 0.0))
        for endpoint in self._denied | set(cycle.denied):
            telemetry.permission_denied.labels(endpoint).set(cycle.denied[endpoint])
        for endpoint in set(cycle.denied) - self._denied:
            # one line per route that starts refusing, not one per dataset and poll
            log.warning(
                "permission.denied",
                endpoint=endpoint,
                answers=cycle.denied[endpoint],
                hint="the token may not read this route; this is not an outage",
            )
        self._denied = set(cycle.denied)
        self._count_rejects(cycle.rejects)
        finished = self._clock()
        for endpoint, failure in cycle.errors.items():
            self.endpoint_errors[endpoint] = EndpointError(
                failure.reason, failure.status, finished, str(failure)
            )
        if crashed:
            self.consecutive_crashes += 1
            telemetry.poll_crashes.inc()
        else:
            self.consecutive_crashes = 0
            self.progress.mark()  # a crashing poller is not making progress
        if snapshot.up:
            self.consecutive_failures = 0
        else:
            self.consecutive_failures += 1
            telemetry.poll_failures.inc()
        error = cycle.fatal or _first_error(cycle)
        self.history = [
            PollRecord(
                finished,
                snapshot.up,
                duration,
                cycle.requests,
                cycle.fetched,
                dict(cycle.failures),
                error,
            ),
            *self.history[: HISTORY - 1],
        ]
        log.info(
            "poll.finished",
            up=snapshot.up,
            cycle=snapshot.cycle,
            datasets=len(snapshot.datasets),
            watched=len(snapshot.watched()),
            fetched=cycle.fetched,
            requests=cycle.requests,
            failures=dict(cycle.failures),
            bad_values=dict(cycle.rejects.counts),
            error=error,
            duration=round(duration, 3),
        )

    def _count_rejects(self, rejects: parse.Rejects) -> None:
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


def _first_error(cycle: _Cycle) -> str | None:
    for error in cycle.errors.values():
        if error.reason not in DATASET_PROBLEMS:
            return str(error)
    return None
