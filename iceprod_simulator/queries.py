"""The real server's Mongo finds and aggregations, computed over a Store.

Group outputs come in the order the reference server (IceProd on mongomock) yields them:
sorted by the group key, then re-sorted by the handler where it sorts.
"""

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable
from typing import Any, TypeVar

from iceprod_exporter.model.snapshot import DATASET_STATUSES, JOB_STATUSES, TASK_STATUSES
from iceprod_simulator.states import sort_by_status
from iceprod_simulator.store import Doc, Store

_MISSING = object()
K = TypeVar("K", str, tuple[str, str])


def _number(value: object) -> int | float | None:
    """The value if Mongo treats it as a number (bool is its own BSON type), else None."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _numbers(values: Iterable[object]) -> list[int | float]:
    """The numeric values, in order (what $sum, $avg and $stdDevSamp use)."""
    return [n for n in map(_number, values) if n is not None]


def _first(docs: Iterable[Doc], key: str) -> Any:
    """$first over a field: the first document that has it."""
    return next((d[key] for d in docs if key in d), None)


def _grouped(docs: Iterable[Doc], key: Callable[[Doc], K]) -> list[tuple[K, list[Doc]]]:
    """$group as mongomock runs it: groups sorted by key, documents in natural order."""
    groups: defaultdict[K, list[Doc]] = defaultdict(list)
    for doc in docs:
        groups[key(doc)].append(doc)
    return sorted(groups.items(), key=lambda item: item[0])


def _stddev_sample(values: list[int | float]) -> float | None:
    """$stdDevSamp, two-pass over floats as the reference harness's mongomock bridge does."""
    if len(values) < 2:
        return None
    nums = [float(v) for v in values]
    mean = sum(nums) / len(nums)
    return math.sqrt(sum((x - mean) ** 2 for x in nums) / (len(nums) - 1))


def _gpu(task: Doc) -> object:
    """The task's requirements.gpu, or _MISSING."""
    reqs = task.get("requirements")
    return reqs.get("gpu", _MISSING) if isinstance(reqs, dict) else _MISSING


def _gpu_matches(task: Doc, gpu: bool) -> bool:
    """The `gpu` filter of TaskCountsStatusHandler.counts."""
    value = _gpu(task)
    number = _number(value)
    if gpu:
        return number is not None and number >= 1
    return value is _MISSING or (number is not None and number <= 0)


def list_datasets(
    store: Store,
    statuses: Collection[str] | None,
    groups: Collection[str] | None,
    users: Collection[str] | None,
    keys: Collection[str] | None,
    readable: Callable[[str], bool],
) -> dict[str, Doc]:
    """GET /datasets: filter, then an inclusion projection that always has dataset_id."""
    wanted = {*(keys or ()), "dataset_id"}
    filters = [
        (key, allowed)
        for key, allowed in (("status", statuses), ("group", groups), ("username", users))
        if allowed is not None
    ]
    return {
        doc["dataset_id"]: {k: v for k, v in doc.items() if k in wanted}
        for doc in store.datasets.values()
        if all(doc.get(key) in allowed for key, allowed in filters) and readable(doc["dataset_id"])
    }


def dataset_summaries(store: Store, readable: Callable[[str], bool]) -> dict[str, list[str]]:
    """GET /dataset_summaries/status."""
    ret: defaultdict[str, list[str]] = defaultdict(list)
    for doc in store.datasets.values():
        if readable(doc["dataset_id"]):
            ret[doc["status"]].append(doc["dataset_id"])
    return sort_by_status(ret, DATASET_STATUSES)


def job_counts(store: Store, dataset_id: str) -> dict[str, int]:
    """GET /datasets/{id}/job_counts/status."""
    counts = Counter(job["status"] for job in store.jobs_of(dataset_id))
    return sort_by_status(counts, JOB_STATUSES)


def task_counts(
    tasks: Iterable[Doc], statuses: Collection[str] | None, gpu: bool | None
) -> dict[str, int]:
    """GET /task_counts/status and /datasets/{id}/task_counts/status over `tasks`."""
    counts = Counter(
        task["status"]
        for task in tasks
        if (statuses is None or task["status"] in statuses)
        and (gpu is None or _gpu_matches(task, gpu))
    )
    return sort_by_status(counts, TASK_STATUSES)


def name_status_counts(store: Store, dataset_id: str) -> dict[str, dict[str, int]]:
    """GET /datasets/{id}/task_counts/name_status: names ordered by task_index."""
    ret: defaultdict[str, dict[str, int]] = defaultdict(dict)
    ordering: dict[str, Any] = {}
    groups = _grouped(store.tasks_of(dataset_id), lambda t: (t["name"], t["status"]))
    for (name, status), tasks in groups:
        ret[name][status] = len(tasks)
        ordering[name] = _first(tasks, "task_index")
    return {name: ret[name] for name in sorted(ordering, key=ordering.__getitem__)}


def task_stats(store: Store, dataset_id: str) -> dict[str, dict[str, Any]]:
    """GET /datasets/{id}/task_stats: per task name, over complete tasks."""
    complete = (t for t in store.tasks_of(dataset_id) if t["status"] == "complete")
    ret: dict[str, dict[str, Any]] = {}
    ordering: dict[str, Any] = {}
    for name, tasks in _grouped(complete, lambda t: t["name"]):
        ret[name] = _stats_of(tasks)
        ordering[name] = _first(tasks, "task_index")
    return {name: ret[name] for name in sorted(ordering, key=ordering.__getitem__)}


def _stats_of(tasks: list[Doc]) -> dict[str, Any]:
    """One task name's row of task_stats, over its complete tasks."""
    walltimes = _numbers(t.get("walltime") for t in tasks)
    present = [t["walltime"] for t in tasks if t.get("walltime") is not None]
    total = sum(walltimes)
    total_err = sum(_numbers(t.get("walltime_err") for t in tasks))
    denom = total + total_err
    return {
        "count": len(tasks),
        "gpu": sum(_numbers(map(_gpu, tasks))),
        "total_hrs": total,
        "total_err_hrs": total_err,
        "avg_hrs": total / float(len(walltimes)) if walltimes else None,
        "stddev_hrs": _stddev_sample(walltimes),
        "min_hrs": min(present) if present else None,
        "max_hrs": max(present) if present else None,
        "efficiency": total / denom if denom > 0 else 0.0,
    }
