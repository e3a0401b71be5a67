"""What IceProd held at the last poll, as immutable values.

The poller builds a new :class:`Snapshot` each cycle and swaps one reference; scrapes only read it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

#: IceProd 3.x status lists (iceprod/server/states.py), in the order the API sorts them.
DATASET_STATUSES: tuple[str, ...] = ("processing", "suspended", "errors", "complete")
JOB_STATUSES: tuple[str, ...] = ("processing", "suspended", "errors", "complete")
TASK_STATUSES: tuple[str, ...] = (
    "idle",
    "waiting",
    "queued",
    "processing",
    "suspended",
    "failed",
    "complete",
)
#: task statuses IceProd's scheduler moves tasks through (``queue_tasks`` and the grids)
ACTIVE_TASK_STATUSES: tuple[str, ...] = ("idle", "waiting", "queued", "processing")
#: how IceProd splits tasks for scheduling: ``gpu`` when ``requirements.gpu >= 1``
RESOURCES: tuple[str, ...] = ("cpu", "gpu")

Counts = Mapping[str, int]
K = TypeVar("K")
V = TypeVar("V")


def frozen_map(items: Mapping[K, V] | Iterable[tuple[K, V]]) -> Mapping[K, V]:
    """Return a read-only mapping, so a snapshot cannot be changed after it is published."""
    return MappingProxyType(dict(items))


class SmallMap(Mapping[K, V]):
    """A read-only mapping of a few entries: a tuple of keys and a tuple of values.

    A snapshot of 10,000 datasets holds about 40,000 of these (counts by status, task names).
    As a dict behind a read-only proxy each costs about 290 bytes; this costs about 110, and
    maps with the same keys can share one key tuple (the parser passes shared ones).
    Lookups scan the keys: there are a handful.
    """

    __slots__ = ("_keys", "_values")

    def __init__(self, keys: tuple[K, ...], values: tuple[V, ...]) -> None:
        if len(keys) != len(values) or len(set(keys)) != len(keys):
            raise ValueError("SmallMap needs distinct keys, one value each")
        self._keys = keys
        self._values = values

    def __getitem__(self, key: K) -> V:
        for i, k in enumerate(self._keys):
            if k == key:
                return self._values[i]
        raise KeyError(key)

    def __iter__(self) -> Iterator[K]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SmallMap) and self._keys is other._keys:
            return self._values == other._values
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]  # equal to dicts, so unhashable like them

    def __repr__(self) -> str:
        return f"SmallMap({dict(zip(self._keys, self._values, strict=True))!r})"


def dense(counts: Counts, known: Sequence[str]) -> list[tuple[str, int]]:
    """Every known status with 0 filled in, then unknown ones as the API reported them."""
    pairs = [(status, counts.get(status, 0)) for status in known]
    pairs.extend((status, n) for status, n in counts.items() if status not in known)
    return pairs


@dataclass(frozen=True, slots=True)
class TaskStats:
    """Walltime statistics of one task name over its complete tasks (``/task_stats``)."""

    count: int
    gpu: float
    total_hrs: float
    total_err_hrs: float
    avg_hrs: float
    stddev_hrs: float | None
    min_hrs: float
    max_hrs: float
    efficiency: float | None


@dataclass(frozen=True, slots=True)
class Dataset:
    """One dataset: metadata from discovery plus its last counts and stats."""

    dataset_id: str
    number: int
    status: str
    description: str = ""
    group: str = ""
    username: str = ""
    priority: float | None = None
    start_timestamp: float | None = None
    #: None when IceProd's value could not be exposed (see parse.py)
    jobs_submitted: int | None = 0
    tasks_submitted: int | None = 0
    #: IceProd completes it once the jobs materialized so far are complete
    truncated: bool = False
    #: IceProd never completes it (dataset_completion skips it)
    always_active: bool = False
    #: job status -> count, as last read from ``job_counts/status``; None before the first read
    jobs: Counts | None = None
    #: task name -> status -> count, from ``task_counts/name_status``
    tasks: Mapping[str, Counts] | None = None
    task_stats: Mapping[str, TaskStats] | None = None
    #: when ``jobs`` and ``tasks`` were last read (quiet datasets are read less often)
    counted_at: float | None = None
    #: False once the dataset completed or vanished: it keeps its last series for the grace period
    watched: bool = True

    @property
    def label(self) -> str:
        """The ``dataset`` label value: the dataset number, as IceProd's own metrics use."""
        return str(self.number)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the collector exposes, as of one poll."""

    #: True when the last poll reached IceProd and its discovery call succeeded
    up: bool = False
    polled_at: float | None = None
    last_success: float | None = None
    datasets: Mapping[str, Dataset] = field(default_factory=lambda: frozen_map({}))
    #: IceProd-wide datasets by status; None on shards that do not report IceProd-wide values
    dataset_counts: Counts | None = None
    #: IceProd-wide tasks by resource (``cpu``, ``gpu``) and active status; None on other
    #: shards or when the token may not read the global route
    active_tasks: Mapping[str, Counts] | None = None
    cycle: int = 0

    def visible(self, now: float, max_staleness: float) -> Snapshot:
        """Drop dataset series once the last good poll is older than ``max_staleness``."""
        if self.last_success is not None and now - self.last_success <= max_staleness:
            return self
        return dataclasses.replace(
            self, datasets=frozen_map({}), dataset_counts=None, active_tasks=None
        )

    def watched(self) -> list[Dataset]:
        """Datasets whose counts are polled, in dataset-number order."""
        return sorted(
            (d for d in self.datasets.values() if d.watched),
            key=lambda d: d.number,
        )

    def ordered(self) -> list[Dataset]:
        """All exposed datasets in dataset-number order, for stable exposition."""
        return sorted(self.datasets.values(), key=lambda d: d.number)
