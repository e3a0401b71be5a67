"""Which datasets one cycle reads (pure): each discovered dataset in a case, each case a rule.

A dataset falls in one :class:`Case` (first seen, just completed, retired, changed, ...); a rule
per case says whether it is read this cycle, and how, or keeps its last values. Unchanged
datasets stay the same objects from one snapshot to the next (see :func:`_kept`).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from iceprod_exporter.model.snapshot import Dataset, Snapshot, frozen_map
from iceprod_exporter.poll.schedule import Schedule, Tracking


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


class Case(enum.Enum):
    """What discovery says of one dataset of this shard, as far as this cycle's reads go."""

    #: complete when first seen (counted in iceprod_datasets only), or complete all along
    LEFT_OUT = enum.auto()
    #: just completed: its final state is read once, then it retires
    COMPLETED = enum.auto()
    #: complete and retired: keeps its last values, unwatched, until the grace period ends
    RETIRED = enum.auto()
    #: every dataset is read this cycle (``once``, or a forced poll)
    FORCED = enum.auto()
    #: not seen before
    NEW = enum.auto()
    #: its status or metadata changed: read at once, quiet or not
    CHANGED = enum.auto()
    #: back in the watched set after it had retired (it reappeared, or answers again)
    RETURNED = enum.auto()
    #: its cadence says it is due
    DUE = enum.auto()
    #: not due: keeps its last values
    NOT_DUE = enum.auto()


@dataclass(frozen=True, slots=True)
class _Seen:
    """One discovered dataset: discovery's metadata with the last counts, and its history."""

    dataset: Dataset
    before: Dataset | None
    track: Tracking
    changed: bool


def _seen(before: Dataset | None, track: Tracking, row: Mapping[str, Any]) -> _Seen:
    """Discovery refreshes the metadata; the last counts and stats stay until read again."""
    if before is None:
        return _Seen(Dataset(**row), before, track, changed=False)
    if any(getattr(before, k) != v for k, v in row.items()):
        return _Seen(dataclasses.replace(before, **row), before, track, changed=True)
    return _Seen(before, before, track, changed=False)  # the snapshot keeps the same object


def _complete_case(seen: _Seen) -> Case:
    if seen.before is None:
        return Case.LEFT_OUT
    if seen.track.retired_at is not None:
        return Case.RETIRED
    if seen.before.status != "complete":
        return Case.COMPLETED
    return Case.LEFT_OUT


def _classify(seen: _Seen, schedule: Schedule, now: float, full: bool) -> Case:
    """The case of one discovered dataset this cycle."""
    if seen.dataset.status == "complete":
        return _complete_case(seen)
    if full:
        return Case.FORCED
    if seen.before is None:
        return Case.NEW
    if seen.changed:
        return Case.CHANGED
    if seen.track.retired_at is not None:
        return Case.RETURNED
    if schedule.counts_due(seen.dataset, seen.track, now):
        return Case.DUE
    return Case.NOT_DUE


def _final_read(seen: _Seen, schedule: Schedule, now: float) -> Fetch:
    return Fetch(seen.dataset, stats=schedule.task_stats_interval > 0, final=True)


def _forced_read(seen: _Seen, schedule: Schedule, now: float) -> Fetch:
    return Fetch(_kept(seen.dataset, watched=True), stats=schedule.task_stats_interval > 0)


def _read(seen: _Seen, schedule: Schedule, now: float) -> Fetch:
    dataset = _kept(seen.dataset, watched=True)
    return Fetch(dataset, stats=schedule.stats_due(dataset, seen.track, now))


#: the cases read this cycle, and how
_READS: Mapping[Case, Callable[[_Seen, Schedule, float], Fetch]] = {
    Case.COMPLETED: _final_read,
    Case.FORCED: _forced_read,
    Case.NEW: _read,
    Case.CHANGED: _read,
    Case.RETURNED: _read,
    Case.DUE: _read,
}
#: the cases that keep their last values, and whether they stay watched
_KEEPS: Mapping[Case, bool] = {Case.RETIRED: False, Case.NOT_DUE: True}


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
        seen = _seen(previous.datasets.get(dataset_id), tracking.get(dataset_id, Tracking()), row)
        case = _classify(seen, schedule, now, full)
        if case in _READS:
            fetches.append(_READS[case](seen, schedule, now))
        elif case in _KEEPS:
            kept[dataset_id] = _kept(seen.dataset, watched=_KEEPS[case])
    gone = frozenset(
        dataset_id
        for dataset_id in previous.datasets
        if dataset_id not in rows and schedule.mine(dataset_id)
    )
    return Plan(tuple(fetches), frozen_map(kept), gone)


def _kept(dataset: Dataset, **changes: Any) -> Dataset:
    """``dataset`` with ``changes``: the same object when they change nothing.

    Most datasets are the same from one cycle to the next. Rebuilding them all would free the
    previous snapshot's objects between the new ones, and at 10,000 datasets those holes keep
    tens of megabytes of the allocator's pages resident.
    """
    if all(getattr(dataset, k) == v for k, v in changes.items()):
        return dataset
    return dataclasses.replace(dataset, **changes)
