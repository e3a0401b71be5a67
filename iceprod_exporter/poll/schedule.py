"""What is due when: the cadences of each kind of read, the shards and phases, the bookkeeping.

Pure rules over a dataset and its :class:`Tracking`: nothing here reads IceProd or builds a
snapshot.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from iceprod_exporter.model.snapshot import Dataset

#: statuses counted on the slow cadence; ``complete`` is only counted once, when it is reached
SLOW_STATUSES = frozenset({"suspended", "errors"})


def _digest(dataset_id: str) -> bytes:
    return hashlib.sha256(dataset_id.encode("utf-8", "surrogatepass")).digest()


def shard_of(dataset_id: str, total_shards: int) -> int:
    """Stable shard of a dataset: the same on every replica, release and restart."""
    return int.from_bytes(_digest(dataset_id)[:8], "big") % total_shards


def phase_of(dataset_id: str) -> float:
    """Stable phase of a dataset in [0, 1): where in each slow interval it is read."""
    return int.from_bytes(_digest(dataset_id)[8:16], "big") / 2**64


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


def completed(dataset: Dataset) -> int | None:
    """The dataset's complete tasks as last counted (None before its first read)."""
    if dataset.tasks is None:
        return None
    return sum(counts.get("complete", 0) for counts in dataset.tasks.values())


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
