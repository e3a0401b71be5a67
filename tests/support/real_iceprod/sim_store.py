"""Load the scenario into the simulator's :class:`~iceprod_simulator.Store`.

The counterpart of ``seed.py`` for the simulated IceProd: the same POST bodies, then the same
field changes the real write routes make (``$set`` = ``dict.update``, which keeps each key's
place), in the same order. So the two servers hold the same scenario and their read routes
can be compared response by response, modulo the ids and dates each server generates.

Write route -> document change (IceProd 3.2.43 handlers):

- PUT /datasets/{id}/jobs_submitted: ``jobs_submitted``, ``tasks_submitted``
- PUT /datasets/{id}/priority: ``priority``; POST .../dataset_actions/truncate: ``truncated``;
  PUT /datasets/{id}/status: ``status``
- PUT /tasks/{id}/status: ``status``, ``status_changed``
- POST /task_actions/queue: ``status`` queued, ``site``, ``instance_id`` (no status_changed)
- PATCH /tasks/{id}: the body (``walltime``, ``walltime_err``, ``walltime_err_n``)
- PUT /datasets/{id}/jobs/{job_id}/status: ``status``, ``status_changed``
- POST /grids then PATCH /grids/{id}: the body plus ``last_update``
"""

from __future__ import annotations

from dataclasses import dataclass

from iceprod_simulator import Store

from .scenario import SCENARIO, Dataset, Scenario, validate
from .seed import (
    TASK_PATHS,
    SeededDataset,
    SeededScenario,
    add_jobs,
    dataset_post_body,
    moving_order,
)


@dataclass
class LoadedScenario:
    """The Store and the ids it generated, shaped like the seed's result."""

    store: Store
    seeded: SeededScenario


def _load_dataset(store: Store, ds: Dataset) -> SeededDataset:
    dataset_id = store.add_dataset(dataset_post_body(ds))
    doc = store.datasets[dataset_id]
    if ds.initial_jobs_submitted is not None:
        doc.update(
            jobs_submitted=ds.jobs_submitted,
            tasks_submitted=ds.jobs_submitted * doc["tasks_per_job"],
        )
    if ds.priority != 0.5:
        doc.update(priority=ds.priority)
    loaded = SeededDataset(dataset_id=dataset_id, dataset=doc["dataset"])
    add_jobs(ds, loaded, post_job=store.add_job, post_task=store.add_task)
    for task, task_id in moving_order(ds, loaded.task_ids):
        task_doc = store.tasks[task_id]
        for status in TASK_PATHS[task.status]:
            if status == "queued" and task.site:
                task_doc.update(status="queued", site=task.site, instance_id=store.new_id())
            else:
                task_doc.update(status=status, status_changed=store.clock())
        if task.walltime or task.walltime_err:
            task_doc.update(
                walltime=task.walltime,
                walltime_err=task.walltime_err,
                walltime_err_n=1 if task.walltime_err else 0,
            )
    for job, job_id in zip(ds.jobs, loaded.job_ids, strict=True):
        if job.status != "processing":
            store.jobs[job_id].update(status=job.status, status_changed=store.clock())
    if ds.truncated:
        doc.update(truncated=True)
    if ds.status != "processing":
        doc.update(status=ds.status)
    return loaded


def load_store(scenario: Scenario = SCENARIO, store: Store | None = None) -> LoadedScenario:
    """Load ``scenario`` into ``store`` (a fresh Store by default)."""
    validate(scenario)
    store = store if store is not None else Store()
    with store.lock:
        datasets = {ds.key: _load_dataset(store, ds) for ds in scenario.datasets}
        grids: dict[str, str] = {}
        for grid in scenario.grids:
            grid_id = store.add_grid(
                {
                    "host": grid.host,
                    "queues": dict(grid.queues),
                    "version": grid.version,
                    "debug": grid.debug,
                }
            )
            grids[grid.host] = grid_id
            if grid.patch:
                store.grids[grid_id].update({**grid.patch, "last_update": store.clock()})
    return LoadedScenario(store, SeededScenario(datasets=datasets, grids=grids))
