"""Expected IceProd answers, computed from the scenario data alone.

Nothing here calls the server or imports IceProd: the counts are derived from
``scenario.SCENARIO`` so that tests compare two independent computations. Dataset numbers
assume the scenario was seeded into a fresh server (the counter starts at 1).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any

from .scenario import (
    ACTIVE_TASK_STATUSES,
    DATASET_STATUSES,
    JOB_STATUSES,
    SCENARIO,
    TASK_STATUSES,
    Dataset,
    Scenario,
)


def dataset_numbers(scenario: Scenario = SCENARIO) -> dict[str, int]:
    """Dataset key -> dataset number (1-based seeding order)."""
    return {ds.key: i for i, ds in enumerate(scenario.datasets, start=1)}


def job_counts(ds: Dataset) -> dict[str, int]:
    """``/datasets/{id}/job_counts/status``: non-zero statuses in state order."""
    c = Counter(job.status for job in ds.jobs)
    return {s: c[s] for s in JOB_STATUSES if c[s]}


def task_counts_name_status(ds: Dataset) -> dict[str, dict[str, int]]:
    """``/datasets/{id}/task_counts/name_status``: names in task_index order, non-zero only."""
    out: dict[str, dict[str, int]] = {}
    for i, tdef in enumerate(ds.task_defs):
        c = Counter(job.tasks[i].status for job in ds.jobs)
        if c:
            out[tdef.name] = {s: c[s] for s in TASK_STATUSES if c[s]}
    return out


def task_counts_status(ds: Dataset) -> dict[str, int]:
    """``/datasets/{id}/task_counts/status``: all names summed."""
    c = Counter(t.status for job in ds.jobs for t in job.tasks)
    return {s: c[s] for s in TASK_STATUSES if c[s]}


def task_documents(ds: Dataset) -> dict[tuple[int, str], dict[str, Any]]:
    """(job_index, task name) -> fields of the task document the scenario determines."""
    return {
        (j, tdef.name): {
            "task_index": i,
            "status": t.status,
            "site": t.site,
            "walltime": t.walltime,
            "walltime_err": t.walltime_err,
            "requirements": tdef.requirements(),
        }
        for j, job in enumerate(ds.jobs)
        for i, (tdef, t) in enumerate(zip(ds.task_defs, job.tasks, strict=True))
    }


def dataset_metadata(ds: Dataset, number: int) -> dict[str, Any]:
    """Fields of ``GET /datasets/{id}`` that the scenario determines."""
    return {
        "dataset": number,
        "description": ds.description,
        "group": ds.group,
        "username": ds.username,
        "status": ds.status,
        "jobs_submitted": ds.jobs_submitted,
        "tasks_submitted": ds.jobs_submitted * ds.tasks_per_job,
        "tasks_per_job": ds.tasks_per_job,
        "priority": ds.priority,
        "truncated": ds.truncated,
        "always_active": ds.always_active,
    }


def task_stats(ds: Dataset) -> dict[str, dict[str, Any]]:
    """``/datasets/{id}/task_stats``: per task name, over complete tasks only."""
    out: dict[str, dict[str, Any]] = {}
    for i, tdef in enumerate(ds.task_defs):
        done = [job.tasks[i] for job in ds.jobs if job.tasks[i].status == "complete"]
        if not done:
            continue
        hrs = [t.walltime for t in done]
        total, err = sum(hrs), sum(t.walltime_err for t in done)
        out[tdef.name] = {
            "count": len(done),
            "gpu": tdef.gpu * len(done),
            "total_hrs": total,
            "total_err_hrs": err,
            "avg_hrs": total / len(done),
            "stddev_hrs": statistics.stdev(hrs) if len(hrs) > 1 else None,
            "min_hrs": min(hrs),
            "max_hrs": max(hrs),
            "efficiency": total / (total + err) if total + err > 0 else 0.0,
        }
    return out


def dataset_monitor(scenario: Scenario = SCENARIO) -> dict[str, dict[tuple[str, ...], float]]:
    """Series ``iceprod.scheduled_tasks.dataset_monitor`` (3.2.43) should export.

    Only ``processing`` datasets; jobs: all 4 statuses with zeros; tasks: all 7 statuses for
    names with at least one task; future hours: (waiting+queued+processing) x mean complete
    walltime per name, plus (jobs_submitted - materialized jobs) x that mean for every name
    with complete tasks; gpu when the name's complete tasks sum requirements.gpu > 0;
    each resource total truncated with int().
    """
    numbers = dataset_numbers(scenario)
    jobs: dict[tuple[str, ...], float] = {}
    tasks: dict[tuple[str, ...], float] = {}
    future = {"cpu": 0.0, "gpu": 0.0}
    for ds in scenario.datasets:
        if ds.status != "processing":
            continue
        num = str(numbers[ds.key])
        jc = job_counts(ds)
        for s in JOB_STATUSES:
            jobs[(num, s)] = float(jc.get(s, 0))
        stats = task_stats(ds)
        for name, counts in task_counts_name_status(ds).items():
            for s in TASK_STATUSES:
                tasks[(num, name, s)] = float(counts.get(s, 0))
            if name in stats:
                active = sum(counts.get(s, 0) for s in ("waiting", "queued", "processing"))
                res = "gpu" if stats[name]["gpu"] > 0 else "cpu"
                future[res] += active * stats[name]["avg_hrs"]
        remaining = ds.jobs_submitted - len(ds.jobs)
        for st in stats.values():
            future["gpu" if st["gpu"] > 0 else "cpu"] += remaining * st["avg_hrs"]
    return {
        "iceprod_jobs": jobs,
        "iceprod_tasks": tasks,
        "iceprod_future_resources_hours": {(k,): float(math.trunc(v)) for k, v in future.items()},
    }


# --------------------------------------------------------------------------- the exporter

#: one series: its labels as sorted (name, value) pairs
Labels = tuple[tuple[str, str], ...]
HOUR = 3600.0
#: task_stats field -> the exporter's walltime gauge it feeds (hours become seconds)
WALLTIME_METRICS = {
    "avg_hrs": "iceprod_dataset_task_walltime_mean_seconds",
    "stddev_hrs": "iceprod_dataset_task_walltime_stddev_seconds",
    "min_hrs": "iceprod_dataset_task_walltime_min_seconds",
    "max_hrs": "iceprod_dataset_task_walltime_max_seconds",
    "total_hrs": "iceprod_dataset_task_walltime_complete_seconds",
    "total_err_hrs": "iceprod_dataset_task_walltime_error_seconds",
}


def labels(**values: str) -> Labels:
    """Canonical label set of one series."""
    return tuple(sorted(values.items()))


def visible_datasets(scenario: Scenario = SCENARIO, *, as_user: bool = False) -> list[Dataset]:
    """Datasets ``GET /datasets`` lists: all for system/admin, readable ones for a user.

    A plain IceCube user (groups ``/institutions/IceCube...`` -> IceProd group ``users``) who
    submitted none of them sees the datasets whose read ACL holds ``users``; the real server
    drops the others from the list (per-row ``manual_attr_auth``), it does not mark them.
    """
    return [ds for ds in scenario.datasets if not as_user or ds.readable_by_users]


def dataset_counts(scenario: Scenario = SCENARIO, *, as_user: bool = False) -> dict[str, int]:
    """``iceprod_datasets{status}``: visible datasets by status, every status."""
    c = Counter(ds.status for ds in visible_datasets(scenario, as_user=as_user))
    return {s: c[s] for s in DATASET_STATUSES}


def active_tasks(scenario: Scenario = SCENARIO) -> dict[str, dict[str, int]]:
    """``/task_counts/status?status=idle|waiting|queued|processing&gpu=...`` by resource.

    IceProd-wide: every dataset's tasks, whatever the dataset's status; ``gpu`` is
    ``requirements.gpu >= 1``.
    """
    out: dict[str, Counter[str]] = {"cpu": Counter(), "gpu": Counter()}
    for ds in scenario.datasets:
        for job in ds.jobs:
            for tdef, task in zip(ds.task_defs, job.tasks, strict=True):
                if task.status in ACTIVE_TASK_STATUSES:
                    out["gpu" if tdef.gpu >= 1 else "cpu"][task.status] += 1
    return {resource: dict(c) for resource, c in out.items()}


def exporter_series(
    dataset_ids: Mapping[str, str],
    scenario: Scenario = SCENARIO,
    *,
    as_user: bool = False,
) -> dict[str, dict[Labels, float]]:
    """Every IceProd-derived series the exporter should expose after a full poll.

    ``dataset_ids`` (scenario key -> dataset_id) are the ids the server generated; everything
    else comes from the scenario. Complete datasets are only counted (``iceprod_datasets``),
    not watched. The IceProd-wide active tasks need a system/admin token: a user gets none.
    Server-made timestamps (start_date) are checked by the tests.
    """
    numbers = dataset_numbers(scenario)
    series: dict[str, dict[Labels, float]] = defaultdict(dict)
    series["iceprod_up"][()] = 1.0
    for status, n in dataset_counts(scenario, as_user=as_user).items():
        series["iceprod_datasets"][labels(status=status)] = float(n)
    for ds in visible_datasets(scenario, as_user=as_user):
        if ds.status == "complete":
            continue
        num = str(numbers[ds.key])
        one = labels(dataset=num)
        series["iceprod_dataset_info"][
            labels(
                dataset=num,
                dataset_id=dataset_ids[ds.key],
                group=ds.group,
                username=ds.username,
                description=ds.description,
            )
        ] = 1.0
        for s in DATASET_STATUSES:
            series["iceprod_dataset_status"][labels(dataset=num, status=s)] = float(s == ds.status)
        series["iceprod_dataset_priority"][one] = ds.priority
        series["iceprod_dataset_truncated"][one] = float(ds.truncated)
        series["iceprod_dataset_always_active"][one] = float(ds.always_active)
        series["iceprod_dataset_jobs_submitted"][one] = float(ds.jobs_submitted)
        series["iceprod_dataset_tasks_submitted"][one] = float(ds.jobs_submitted * ds.tasks_per_job)
        jc = job_counts(ds)
        for s in JOB_STATUSES:
            series["iceprod_dataset_jobs"][labels(dataset=num, status=s)] = float(jc.get(s, 0))
        for name, counts in task_counts_name_status(ds).items():
            for s in TASK_STATUSES:
                series["iceprod_dataset_tasks"][labels(dataset=num, task_name=name, status=s)] = (
                    float(counts.get(s, 0))
                )
        for name, stats in task_stats(ds).items():
            per_name = labels(dataset=num, task_name=name)
            for field, metric in WALLTIME_METRICS.items():
                if stats[field] is not None:
                    series[metric][per_name] = stats[field] * HOUR
            if stats["total_hrs"] + stats["total_err_hrs"] > 0:  # else IceProd's 0.0: unknown
                series["iceprod_dataset_task_efficiency_ratio"][per_name] = stats["efficiency"]
            series["iceprod_dataset_task_gpu"][per_name] = float(stats["gpu"] > 0)
    if not as_user:
        for resource, counts in active_tasks(scenario).items():
            for s in ACTIVE_TASK_STATUSES:
                series["iceprod_active_tasks"][labels(resource=resource, status=s)] = float(
                    counts.get(s, 0)
                )
    return dict(series)
