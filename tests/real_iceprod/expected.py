"""Expected IceProd answers, computed from the scenario data alone.

Nothing here calls the server or imports IceProd: the counts are derived from
``scenario.SCENARIO`` so that tests compare two independent computations. Dataset numbers
assume the scenario was seeded into a fresh server (the counter starts at 1).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from typing import Any

from .scenario import JOB_STATUSES, SCENARIO, TASK_STATUSES, Dataset, Scenario


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
        (j, tdef.name): {"task_index": i, "status": t.status, "site": t.site,
                         "walltime": t.walltime, "walltime_err": t.walltime_err,
                         "requirements": tdef.requirements()}
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
