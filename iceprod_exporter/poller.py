"""One poll cycle: discover datasets, fan out per dataset, publish the next snapshot."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog

from . import api, parse
from .api import ApiError
from .snapshot import Dataset, Grid, Snapshot, frozen_map
from .telemetry import Telemetry

log = structlog.get_logger(__name__)
T = TypeVar("T")

#: statuses counted on the slow cadence; ``complete`` is only counted once, when it is reached
SLOW_STATUSES = frozenset({"suspended", "errors"})
#: failures that are about one dataset, not about IceProd being unwell
DATASET_PROBLEMS = frozenset({"forbidden", "not_found"})


def shard_of(dataset_id: str, total_shards: int) -> int:
    """Stable shard of a dataset: the same on every replica, release and restart."""
    digest = hashlib.sha256(dataset_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % total_shards


class Source(Protocol):
    """Where the poller reads IceProd from (:class:`~.api.ApiClient`, or a fake in tests)."""

    sent: int  # requests sent so far

    async def get(self, template: str, args: dict[str, str] | None = None, **path: str) -> Any:
        """GET a route by endpoint template."""
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
    shard: int = 0
    total_shards: int = 1

    def counts_due(self, dataset: Dataset, now: float) -> bool:
        """Whether a watched dataset's job and task counts should be read this cycle."""
        if dataset.counted_at is None:
            return True
        if dataset.status in SLOW_STATUSES:
            # half an interval of slack so timer jitter does not skip a whole slow cycle
            return now - dataset.counted_at >= (self.slow_poll_factor - 0.5) * self.poll_interval
        return True

    def stats_due(self, dataset: Dataset, now: float) -> bool:
        """Whether ``task_stats`` should be read along with the counts."""
        if self.task_stats_interval <= 0:
            return False
        return dataset.stats_at is None or now - dataset.stats_at >= self.task_stats_interval

    def mine(self, dataset_id: str) -> bool:
        """Whether this replica polls the dataset."""
        return self.total_shards == 1 or shard_of(dataset_id, self.total_shards) == self.shard


@dataclass
class _Cycle:
    """Book-keeping of one cycle, for the summary event."""

    fetched: int = 0
    requests: int = 0
    failures: Counter[str] = dataclasses.field(default_factory=Counter)
    #: 403 answers by endpoint template: permission problems, not outages
    denied: Counter[str] = dataclasses.field(default_factory=Counter)

    def failed(self, error: ApiError) -> None:
        """Count a failed call."""
        self.failures[error.reason] += 1
        if error.reason == "forbidden":
            self.denied[error.endpoint] += 1


class Poller:
    """Owns the current snapshot; :meth:`poll` replaces it with a newer one."""

    def __init__(
        self,
        client: Source,
        schedule: Schedule,
        telemetry: Telemetry,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._schedule = schedule
        self._telemetry = telemetry
        self._clock = clock
        self.snapshot = Snapshot()
        self.progress_at = clock()
        self.consecutive_failures = 0
        self._denied: set[str] = set()

    def mark_progress(self) -> None:
        """Note that the poller is alive (an API answer arrived or a cycle ended)."""
        self.progress_at = self._clock()

    async def poll(self, full: bool = False) -> Snapshot:
        """Run one cycle and publish its snapshot; ``full`` fetches everything now."""
        started = time.perf_counter()
        previous = self.snapshot
        now = self._clock()
        cycle = _Cycle()
        sent = self._client.sent
        try:
            rows = await self._discover()
        except ApiError as error:
            snapshot = dataclasses.replace(
                previous, up=False, polled_at=self._clock(), cycle=previous.cycle + 1
            )
            cycle.failed(error)
        else:
            snapshot = await self._refresh(previous, rows, now, full, cycle)
        self.snapshot = snapshot  # the one atomic swap scrapes see
        cycle.requests = self._client.sent - sent
        self._finish(snapshot, cycle, time.perf_counter() - started)
        return snapshot

    async def _discover(self) -> dict[str, dict[str, Any]]:
        body = await self._client.get(api.DATASETS, {"keys": "|".join(parse.DATASET_KEYS)})
        if not isinstance(body, dict):
            raise self._client.bad_response(api.DATASETS, "expected an object of datasets")
        rows = {}
        for dataset_id, raw in body.items():
            try:
                rows[str(dataset_id)] = parse.dataset_row(str(dataset_id), raw)
            except parse.BadResponse as exc:
                # one malformed dataset must not hide the others
                log.warning("dataset.malformed", dataset_id=dataset_id, error=str(exc))
        return rows

    async def _refresh(
        self,
        previous: Snapshot,
        rows: Mapping[str, dict[str, Any]],
        now: float,
        full: bool,
        cycle: _Cycle,
    ) -> Snapshot:
        schedule = self._schedule
        datasets: dict[str, Dataset] = {}
        work: list[tuple[Dataset, bool]] = []
        for dataset_id, row in rows.items():
            if not schedule.mine(dataset_id):
                continue
            before = previous.datasets.get(dataset_id)
            current = self._merge(before, row)
            was_watched = before is not None and before.retired_at is None
            if current.status == "complete":
                if was_watched and before is not None and before.status != "complete":
                    # read the final state once so it can be scraped during the grace period
                    work.append((dataclasses.replace(current, retired_at=now), True))
                elif before is not None and before.retired_at is not None:
                    datasets[dataset_id] = dataclasses.replace(
                        current, retired_at=before.retired_at
                    )
                continue
            due = full or schedule.counts_due(current, now)
            if due:
                work.append((current, full or schedule.stats_due(current, now)))
            else:
                datasets[dataset_id] = current
        for dataset_id, before in previous.datasets.items():
            if dataset_id not in rows and schedule.mine(dataset_id):
                retired_at = before.retired_at or now
                datasets[dataset_id] = dataclasses.replace(before, retired_at=retired_at)

        results, grids = await asyncio.gather(
            asyncio.gather(*(self._fetch(d, s, now, cycle) for d, s in work)),
            self._grids(previous, cycle),
        )
        for dataset in results:
            datasets[dataset.dataset_id] = dataset
        expired = [
            dataset_id
            for dataset_id, d in datasets.items()
            if d.retired_at is not None and now - d.retired_at > schedule.grace_period
        ]
        for dataset_id in expired:
            del datasets[dataset_id]

        healthy = not (set(cycle.failures) - DATASET_PROBLEMS)
        finished = self._clock()
        return Snapshot(
            up=healthy,
            polled_at=finished,
            last_success=finished if healthy else previous.last_success,
            datasets=frozen_map(datasets),
            dataset_counts=(
                frozen_map(Counter(row["status"] for row in rows.values()))
                if schedule.shard == 0
                else None
            ),
            grids=grids,
            cycle=previous.cycle + 1,
        )

    async def _grids(self, previous: Snapshot, cycle: _Cycle) -> Mapping[str, Grid] | None:
        if self._schedule.shard != 0:
            return None  # IceProd-wide: one shard reports it
        try:
            return await self._read(api.GRIDS, parse.grids)
        except ApiError as error:
            cycle.failed(error)
            return None if error.reason == "forbidden" else previous.grids

    @staticmethod
    def _merge(before: Dataset | None, row: dict[str, Any]) -> Dataset:
        if before is None:
            return Dataset(**row)
        # keep the last counts and stats; discovery only refreshes metadata
        return dataclasses.replace(before, **row, retired_at=None)

    async def _fetch(
        self, dataset: Dataset, with_stats: bool, now: float, cycle: _Cycle
    ) -> Dataset:
        cycle.fetched += 1
        try:
            path = {"dataset_id": dataset.dataset_id}
            jobs = await self._read(api.JOB_COUNTS, parse.counts, path)
            tasks = await self._read(api.TASK_COUNTS_NAME, parse.name_counts, path)
            dataset = dataclasses.replace(
                dataset, jobs=jobs, tasks=tasks, counted_at=now, forbidden=False
            )
            if with_stats:
                stats = await self._read(api.TASK_STATS, parse.task_stats, path)
                dataset = dataclasses.replace(dataset, task_stats=stats, stats_at=now)
        except ApiError as error:
            cycle.failed(error)
            if error.reason == "forbidden":
                return dataclasses.replace(
                    dataset, forbidden=True, jobs=None, tasks=None, task_stats=None
                )
            if error.reason == "not_found":
                return dataclasses.replace(dataset, retired_at=dataset.retired_at or now)
            log.debug("dataset.failed", dataset=dataset.label, error=str(error))
        # on other failures the last values stay, until max_staleness drops them all
        return dataset

    async def _read(
        self, template: str, parser: Callable[[Any, str], T], path: Mapping[str, str] | None = None
    ) -> T:
        body = await self._client.get(template, None, **(path or {}))
        try:
            return parser(body, template)
        except parse.BadResponse as exc:
            raise self._client.bad_response(template, str(exc)) from None

    def _finish(self, snapshot: Snapshot, cycle: _Cycle, duration: float) -> None:
        telemetry = self._telemetry
        telemetry.poll_duration.observe(duration)
        telemetry.datasets_watched.set(len(snapshot.watched()))
        telemetry.forbidden_datasets.set(sum(d.forbidden for d in snapshot.datasets.values()))
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
        if snapshot.up:
            self.consecutive_failures = 0
        else:
            self.consecutive_failures += 1
            telemetry.poll_failures.inc()
        self.mark_progress()
        log.info(
            "poll.finished",
            up=snapshot.up,
            cycle=snapshot.cycle,
            datasets=len(snapshot.datasets),
            watched=len(snapshot.watched()),
            fetched=cycle.fetched,
            requests=cycle.requests,
            failures=dict(cycle.failures),
            duration=round(duration, 3),
        )
