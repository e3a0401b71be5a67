"""The next snapshot and bookkeeping from a plan and what was read (pure).

Read datasets take their new counts, retired ones wait out the grace period, and what outlived it
is dropped. Nothing here reads IceProd.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from iceprod_exporter.model.snapshot import Counts, Dataset, Snapshot, TaskStats, frozen_map
from iceprod_exporter.poll.plan import Fetch, Plan
from iceprod_exporter.poll.schedule import Schedule, Tracking, completed
from iceprod_exporter.source.client import ApiError
from iceprod_exporter.source.labels import Reason


@dataclass(frozen=True, slots=True)
class FetchResult:
    """What the fan-out read of one dataset; unread parts stay None."""

    jobs: Counts | None = None
    tasks: Mapping[str, Counts] | None = None
    stats: Mapping[str, TaskStats] | None = None
    counted: bool = False
    stats_read: bool = False
    error: ApiError | None = None


def assemble(
    previous: Snapshot,
    tracking: Mapping[str, Tracking],
    work: Plan,
    results: Mapping[str, FetchResult],
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
        datasets[dataset_id], tracks[dataset_id] = _gone(
            previous.datasets[dataset_id], tracking.get(dataset_id, Tracking()), now
        )
    for fetch in work.fetches:
        dataset_id = fetch.dataset.dataset_id
        datasets[dataset_id], tracks[dataset_id] = _read(
            fetch, results.get(dataset_id, FetchResult()), tracking.get(dataset_id, Tracking()), now
        )
    _drop_expired(datasets, tracks, schedule.grace_period, now)
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


def _gone(dataset: Dataset, track: Tracking, now: float) -> tuple[Dataset, Tracking]:
    """A dataset discovery no longer lists: unwatched, retired since it was first missed."""
    return (
        dataclasses.replace(dataset, watched=False),
        dataclasses.replace(track, retired_at=track.retired_at or now),
    )


def _drop_expired(
    datasets: dict[str, Dataset], tracks: dict[str, Tracking], grace_period: float, now: float
) -> None:
    """Drop the datasets retired longer than the grace period."""
    for dataset_id, track in list(tracks.items()):
        if track.retired_at is not None and now - track.retired_at > grace_period:
            del datasets[dataset_id], tracks[dataset_id]


def _read(
    fetch: Fetch, result: FetchResult, track: Tracking, now: float
) -> tuple[Dataset, Tracking]:
    """A fetched dataset and its bookkeeping with what was read of it."""
    if track.retired_at is not None and not fetch.final:
        track = dataclasses.replace(track, retired_at=None)  # back in the watched set
    dataset = fetch.dataset
    if result.counted:
        dataset, track = _counted(dataset, result, track, now)
    if result.stats_read:
        dataset = dataclasses.replace(dataset, task_stats=result.stats)
        track = dataclasses.replace(track, stats_at=now, stats_complete=completed(dataset))
    if result.error is not None:
        dataset, track = _failed(dataset, result.error, track, now)
    if fetch.final:
        # retired whether or not the final read got through (the deadline may cut it): a
        # complete dataset is never read again, so it must not wait for one
        track = dataclasses.replace(track, retired_at=track.retired_at or now)
    if track.retired_at is not None:
        dataset = dataclasses.replace(dataset, watched=False)
    return dataset, track


def _counted(
    dataset: Dataset, result: FetchResult, track: Tracking, now: float
) -> tuple[Dataset, Tracking]:
    """New job and task counts; a read that found them unchanged makes the dataset quieter."""
    same = (result.jobs, result.tasks) == (dataset.jobs, dataset.tasks)
    return (
        dataclasses.replace(dataset, jobs=result.jobs, tasks=result.tasks, counted_at=now),
        dataclasses.replace(track, forbidden=False, unchanged=track.unchanged + 1 if same else 0),
    )


def _failed(
    dataset: Dataset, error: ApiError, track: Tracking, now: float
) -> tuple[Dataset, Tracking]:
    """A failed read: a 403 drops what is held, a 404 retires the dataset."""
    if error.reason == Reason.FORBIDDEN:
        # nothing of it may be read: drop what is held, and read it all again once allowed
        dataset = dataclasses.replace(
            dataset, jobs=None, tasks=None, task_stats=None, counted_at=None
        )
        return dataset, Tracking(retired_at=track.retired_at, forbidden=True)
    if error.reason == Reason.NOT_FOUND:
        return dataset, dataclasses.replace(track, retired_at=track.retired_at or now)
    return dataset, track  # the last values stay, until max_staleness drops them all
