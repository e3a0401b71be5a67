"""Checks IceProd responses and turns them into snapshot values; bad input raises BadResponse."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from .snapshot import Counts, Grid, TaskStats, frozen_map

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
)


class BadResponse(ValueError):
    """A body that is JSON but not the shape IceProd documents."""


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise BadResponse(f"{what}: expected an object, got {type(value).__name__}")
    return value


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadResponse(f"{what}: expected a count, got {value!r}")
    return value


def counts(body: Any, what: str) -> Counts:
    """``{status: count}`` as returned by the ``*_counts/status`` routes."""
    return frozen_map(
        (str(status), _count(n, f"{what}[{status}]")) for status, n in _mapping(body, what).items()
    )


def name_counts(body: Any, what: str) -> Mapping[str, Counts]:
    """``{task_name: {status: count}}`` from ``task_counts/name_status``."""
    return frozen_map(
        (str(name), counts(by_status, f"{what}[{name}]"))
        for name, by_status in _mapping(body, what).items()
    )


def _number(value: Any, what: str, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadResponse(f"{what}: expected a number, got {value!r}")
    return float(value)


def _stats_row(raw: Any, what: str) -> TaskStats:
    row = _mapping(raw, what)

    def num(key: str) -> float:
        return _number(row.get(key), f"{what}.{key}") or 0.0

    def optional(key: str) -> float | None:
        return _number(row.get(key), f"{what}.{key}", optional=True)

    return TaskStats(
        count=_count(row.get("count"), f"{what}.count"),
        gpu=num("gpu"),
        total_hrs=num("total_hrs"),
        total_err_hrs=num("total_err_hrs"),
        avg_hrs=num("avg_hrs"),
        stddev_hrs=optional("stddev_hrs"),
        min_hrs=num("min_hrs"),
        max_hrs=num("max_hrs"),
        efficiency=optional("efficiency"),
    )


def task_stats(body: Any, what: str) -> Mapping[str, TaskStats]:
    """``{task_name: {count, gpu, total_hrs, ...}}`` from ``/datasets/{id}/task_stats``."""
    return frozen_map(
        (str(name), _stats_row(raw, f"{what}[{name}]"))
        for name, raw in _mapping(body, what).items()
    )


def start_timestamp(value: Any) -> float | None:
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


def dataset_row(dataset_id: str, raw: Any) -> dict[str, Any]:
    """One ``GET /datasets`` row as keyword arguments of :class:`~.snapshot.Dataset`."""
    row = _mapping(raw, f"/datasets[{dataset_id}]")
    number = row.get("dataset")
    status = row.get("status")
    if isinstance(number, bool) or not isinstance(number, int):
        raise BadResponse(f"/datasets[{dataset_id}].dataset: expected a number, got {number!r}")
    if not isinstance(status, str) or not status:
        raise BadResponse(f"/datasets[{dataset_id}].status: expected a status, got {status!r}")

    def text(key: str) -> str:
        value = row.get(key)
        return value if isinstance(value, str) else ""

    def whole(key: str) -> int:
        value = row.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    priority = row.get("priority")
    return {
        "dataset_id": dataset_id,
        "number": number,
        "status": status,
        "description": text("description"),
        "group": text("group"),
        "username": text("username"),
        "jobs_submitted": whole("jobs_submitted"),
        "tasks_submitted": whole("tasks_submitted"),
        "priority": (
            float(priority)
            if isinstance(priority, int | float) and not isinstance(priority, bool)
            else None
        ),
        "start_timestamp": start_timestamp(row.get("start_date")),
        "truncated": row.get("truncated") is True,
    }


def grids(body: Any, what: str) -> Mapping[str, Grid]:
    """``{grid_id: {grid_id, host, version, last_update, ...}}`` from ``GET /grids``."""
    result = {}
    for grid_id, raw in _mapping(body, what).items():
        row = _mapping(raw, f"{what}[{grid_id}]")
        host, version = row.get("host"), row.get("version")
        result[str(grid_id)] = Grid(
            grid_id=str(grid_id),
            host=host if isinstance(host, str) else "",
            version=version if isinstance(version, str) else "",
            last_update=start_timestamp(row.get("last_update")),
        )
    return frozen_map(result)
