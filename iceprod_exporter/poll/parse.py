"""The one boundary between IceProd's JSON and the snapshot.

Every value is checked against what the exposition can carry: counts are integers from 0 to 2**53
(exact as floats), other numbers finite floats, label values strings that encode as UTF-8, and
dataset numbers unique. A value that does not fit drops only its field, its task name or its
dataset; :class:`Rejects` counts what was dropped. A body of the wrong shape (not an object where
IceProd documents one) raises :class:`BadResponse`: that is a broken answer, not a bad value.
"""

from __future__ import annotations

import datetime
import math
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from iceprod_exporter.model.snapshot import (
    DATASET_STATUSES,
    JOB_STATUSES,
    TASK_STATUSES,
    Counts,
    SmallMap,
    TaskStats,
)
from iceprod_exporter.source.labels import ValueField

#: the fields the poller asks GET /datasets for (a narrow projection keeps the call cheap)
DATASET_KEYS = (
    "dataset_id",
    "dataset",
    "status",
    "description",
    "group",
    "username",
    "jobs_submitted",
    "tasks_submitted",
    "priority",
    "start_date",
    "truncated",
    "always_active",
)
V = TypeVar("V")

#: the largest count a float64 sample holds exactly
MAX_COUNT = 2**53
#: how many distinct names :func:`shared` keeps before it starts over (a bound on odd input)
SHARED_NAMES_LIMIT = 4096

# JSON decoding makes a new string for every key: at 10,000 datasets about 250,000 copies of the
# same statuses and task names (11 MiB of string objects). The snapshot holds one object per
# distinct name instead.
_KNOWN_NAMES = (*DATASET_STATUSES, *JOB_STATUSES, *TASK_STATUSES)
_shared_names: dict[str | tuple[str, ...], Any] = {}
#: a name, or the names of one map's keys (maps with the same keys share one key tuple)
Shared = TypeVar("Shared", str, tuple[str, ...])


class BadResponse(ValueError):
    """A body that is JSON but not the shape IceProd documents."""


class Rejects:
    """Values of one poll dropped because the exposition cannot carry them, by field."""

    def __init__(self) -> None:
        self.counts: Counter[ValueField] = Counter()
        #: one example per field, for the log line (dataset id and what was wrong; never a value)
        self.examples: dict[ValueField, str] = {}

    def drop(self, field: ValueField, where: str) -> None:
        """Count one dropped value of ``field`` found at ``where``."""
        self.counts[field] += 1
        self.examples.setdefault(field, where)


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise BadResponse(f"{what}: expected an object, got {type(value).__name__}")
    return value


def label(value: Any) -> str | None:
    """``value`` if it can be a label value (a string that encodes as UTF-8), else None."""
    if not isinstance(value, str):
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate such as "\ud800" is valid JSON
        return None
    return value


def _start_shared_names() -> None:
    _shared_names.clear()
    _shared_names.update((name, name) for name in _KNOWN_NAMES)


_start_shared_names()


def shared(name: Shared) -> Shared:
    """The one object kept for ``name``: a status, task, group or user name, or a key tuple."""
    kept: Shared | None = _shared_names.get(name)
    if kept is not None:
        return kept
    if len(_shared_names) >= SHARED_NAMES_LIMIT:
        # names of datasets long gone fill it over months: start over rather than stop sharing
        # (strings already in the snapshot stay valid; only their sharing is lost until re-read)
        _start_shared_names()
    kept = _shared_names.setdefault(name, name)
    return kept


def count(value: Any) -> int | None:
    """``value`` if it is a count a sample carries exactly, else None."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        return None
    return value


def finite(value: Any) -> float | None:
    """``value`` as a finite float, else None (JSON allows NaN, Infinity, huge integers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _counts(body: Any, what: str) -> Counts | None:
    result = {}
    for status, n in _mapping(body, what).items():
        name, value = label(status), count(n)
        if name is None or value is None:
            return None
        result[name] = value
    # shared only once the whole body is accepted: a rejected one leaves no names behind
    return _small_map(result)


def _small_map(result: Mapping[str, V]) -> Mapping[str, V]:
    """``result`` as a :class:`SmallMap` whose names and key tuple are the shared ones."""
    return SmallMap(shared(tuple(shared(name) for name in result)), tuple(result.values()))


def counts(body: Any, what: str, rejects: Rejects) -> Counts | None:
    """``{status: count}`` from ``job_counts/status``; None when a value does not fit."""
    result = _counts(body, what)
    if result is None:
        rejects.drop(ValueField.JOB_COUNTS, what)
    return result


def active_tasks(body: Any, what: str, rejects: Rejects) -> Counts | None:
    """``{status: count}`` from the IceProd-wide ``task_counts/status``; None when unfit."""
    result = _counts(body, what)
    if result is None:
        rejects.drop(ValueField.ACTIVE_TASKS, what)
    return result


def _per_name(
    body: Any,
    what: str,
    rejects: Rejects,
    field: ValueField,
    read: Callable[[Any, str], V | None],
) -> Mapping[str, V]:
    """``{task_name: value}``: names and values that do not fit are dropped and counted."""
    result = {}
    for name, raw in _mapping(body, what).items():
        task_name = label(name)
        value = read(raw, what) if task_name is not None else None
        if task_name is None or value is None:
            rejects.drop(field, what)
            continue
        result[task_name] = value
    return _small_map(result)


def name_counts(body: Any, what: str, rejects: Rejects) -> Mapping[str, Counts]:
    """``{task_name: {status: count}}`` from ``task_counts/name_status``; unfit names dropped."""
    return _per_name(body, what, rejects, ValueField.TASK_COUNTS, _counts)


#: the numbers of a ``task_stats`` row it must carry (absent ones are 0)
_STATS_HOURS = ("gpu", "total_hrs", "total_err_hrs", "avg_hrs", "min_hrs", "max_hrs")


def _hours(row: Mapping[str, Any]) -> dict[str, float] | None:
    """The numbers every ``task_stats`` row carries; None when one does not fit."""
    hours = {key: finite(row.get(key, 0)) for key in _STATS_HOURS}
    fitting = {key: value for key, value in hours.items() if value is not None}
    return fitting if len(fitting) == len(hours) else None


def _nullable(row: Mapping[str, Any]) -> dict[str, float | None] | None:
    """The numbers IceProd may leave null (absent: None); None when one does not fit."""
    values = {key: row.get(key) for key in ("stddev_hrs", "efficiency")}
    numbers = {key: None if value is None else finite(value) for key, value in values.items()}
    if any(numbers[key] is None for key, value in values.items() if value is not None):
        return None
    return numbers


def _stats_row(raw: Any, what: str) -> TaskStats | None:
    row = _mapping(raw, what)
    hours, nullable, n = _hours(row), _nullable(row), count(row.get("count"))
    if n is None or hours is None or nullable is None:
        return None
    if not (hours["total_hrs"] or hours["total_err_hrs"]):
        # IceProd reports 0.0 when its tasks reported no walltime: unknown, not all waste
        nullable["efficiency"] = None
    return TaskStats(
        count=n, stddev_hrs=nullable["stddev_hrs"], efficiency=nullable["efficiency"], **hours
    )


def task_stats(body: Any, what: str, rejects: Rejects) -> Mapping[str, TaskStats]:
    """``{task_name: {count, gpu, total_hrs, ...}}`` from ``task_stats``; unfit names dropped."""
    return _per_name(body, what, rejects, ValueField.TASK_STATS, _stats_row)


def timestamp(value: Any) -> float | None:
    """An IceProd date (UTC, no zone) as a Unix time; None when absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


class _Row:
    """Reads the fields of one object, dropping (and counting) those that do not fit."""

    def __init__(self, row: Mapping[str, Any], where: str, rejects: Rejects) -> None:
        self._row = row
        self._where = where
        self._rejects = rejects

    def _drop(self, field: ValueField) -> None:
        self._rejects.drop(field, self._where)

    def text(self, key: str, field: ValueField) -> str:
        value = self._row.get(key)
        if value is None:
            return ""
        checked = label(value)
        if checked is None:
            self._drop(field)
            return ""
        return checked

    def whole(self, key: str, field: ValueField) -> int | None:
        value = self._row.get(key)
        if value is None:
            return 0
        checked = count(value)
        if checked is None:
            self._drop(field)
        return checked

    def number(self, key: str, field: ValueField) -> float | None:
        value = self._row.get(key)
        if value is None:
            return None
        checked = finite(value)
        if checked is None:
            self._drop(field)
        return checked

    def time(self, key: str, field: ValueField) -> float | None:
        value = self._row.get(key)
        if value is None:
            return None
        checked = timestamp(value)
        if checked is None or not math.isfinite(checked):
            self._drop(field)
            return None
        return checked


def dataset_row(dataset_id: str, raw: Any, rejects: Rejects) -> dict[str, Any] | None:
    """One ``GET /datasets`` row as keyword arguments of :class:`~.snapshot.Dataset`.

    None when the dataset cannot be exposed at all (no usable id, number or status).
    """
    where = f"/datasets[{label(dataset_id) or '?'}]"
    row = _mapping(raw, where)
    number, status = count(row.get("dataset")), label(row.get("status"))
    if label(dataset_id) is None or number is None:
        rejects.drop(ValueField.DATASET, where)
        return None
    if not status:
        rejects.drop(ValueField.STATUS, where)
        return None
    fields = _Row(row, where, rejects)
    return {
        "dataset_id": dataset_id,
        "number": number,
        "status": shared(status),
        "description": fields.text("description", ValueField.DESCRIPTION),
        "group": shared(fields.text("group", ValueField.GROUP)),
        "username": shared(fields.text("username", ValueField.USERNAME)),
        "jobs_submitted": fields.whole("jobs_submitted", ValueField.JOBS_SUBMITTED),
        "tasks_submitted": fields.whole("tasks_submitted", ValueField.TASKS_SUBMITTED),
        "priority": fields.number("priority", ValueField.PRIORITY),
        "start_timestamp": fields.time("start_date", ValueField.START_DATE),
        "truncated": row.get("truncated") is True,
        "always_active": row.get("always_active") is True,
    }


def datasets(body: Any, rejects: Rejects) -> dict[str, dict[str, Any]]:
    """``GET /datasets`` as rows by dataset id, with dataset numbers made unique.

    When two datasets carry the same number, the one whose ``dataset_id`` sorts first wins (the
    same one on every poll and replica); the other is dropped and counted as ``dataset_conflict``.
    """
    rows: dict[str, dict[str, Any]] = {}
    owner: dict[int, str] = {}
    for dataset_id, raw in sorted(_mapping(body, "/datasets").items()):
        row = dataset_row(str(dataset_id), raw, rejects)
        if row is None:
            continue
        if row["number"] in owner:
            rejects.drop(
                ValueField.DATASET_CONFLICT,
                f"/datasets[{row['dataset_id']}] has the number of {owner[row['number']]}",
            )
            continue
        owner[row["number"]] = row["dataset_id"]
        rows[row["dataset_id"]] = row
    return rows
