"""Load the scenario into a running IceProd server through its real REST API.

Every object is created with the write routes IceProd's own services use, so documents carry
exactly the fields the server generates (ids, dataset numbers, ``status_changed`` ...):

- POST /datasets, PUT /datasets/{id}/jobs_submitted (admin), PUT /datasets/{id}/priority,
  POST /datasets/{id}/dataset_actions/truncate, PUT /datasets/{id}/status
- POST /jobs, PUT /datasets/{id}/jobs/{job_id}/status
- POST /tasks, PUT /tasks/{id}/status (walking the allowed transitions), PATCH /tasks/{id},
  POST /task_actions/queue (for tasks with a site)
- POST /grids, PATCH /grids/{id}

All of them work on mongomock once server_main.py's bridges are installed. Without them,
PUT .../jobs_submitted fails with 500 (needs bridges 7 and 8: session/transaction and
with_options) and POST /task_actions/queue answers 404 "Task not found" (needs bridge 6:
find_one_and_update with projection {'_id': False}, sort and ReturnDocument.AFTER).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from .scenario import SCENARIO, Dataset, Scenario, Task, validate

# Shortest allowed path from the initial task status (idle) to each status,
# per iceprod/server/states.py TASK_STATUS.
TASK_PATHS: dict[str, tuple[str, ...]] = {
    "idle": (),
    "waiting": ("waiting",),
    "queued": ("waiting", "queued"),
    "processing": ("waiting", "queued", "processing"),
    "complete": ("waiting", "queued", "processing", "complete"),
    "failed": ("waiting", "queued", "processing", "failed"),
    "suspended": ("suspended",),
}

Token = str | Callable[[], str]


class SeedError(RuntimeError):
    """A write route answered with an unexpected status."""


@dataclass
class SeededDataset:
    """Server-assigned identifiers of one seeded dataset."""

    dataset_id: str
    dataset: int
    job_ids: list[str] = field(default_factory=list)
    task_ids: list[list[str]] = field(default_factory=list)  # [job][task_index]


@dataclass
class SeededScenario:
    """What the seed created, keyed by the scenario's dataset keys / grid hosts."""

    datasets: dict[str, SeededDataset]
    grids: dict[str, str]
    requests: int = 0


class Api:
    """Minimal JSON client that fails loudly, naming the route."""

    def __init__(self, url: str, token: Token, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.session = requests.Session()
        self.count = 0

    def call(self, method: str, path: str, body: Any = None, token: Token | None = None) -> Any:
        tok = token if token is not None else self.token
        headers = {"Authorization": "Bearer " + (tok() if callable(tok) else tok)}
        self.count += 1
        r = self.session.request(
            method, self.url + path, json=body, headers=headers, timeout=self.timeout
        )
        if r.status_code not in (200, 201):
            raise SeedError(f"{method} {path} -> {r.status_code}: {r.text[:500]}")
        return r.json() if r.content else None


def _move_task(api: Api, dataset_id: str, task: Task, task_id: str) -> None:
    """Walk one idle task to its final status, then record its walltimes."""
    for status in TASK_PATHS[task.status]:
        if status == "queued" and task.site:
            queued = api.call(
                "POST",
                "/task_actions/queue",
                {
                    "requirements": {"site": task.site},
                    "query_params": {"dataset_id": dataset_id},
                },
            )
            if queued["task_id"] != task_id:
                raise SeedError(f"queue action picked {queued['task_id']}, wanted {task_id}")
        else:
            api.call("PUT", f"/tasks/{task_id}/status", {"status": status})
    if task.walltime or task.walltime_err:
        api.call(
            "PATCH",
            f"/tasks/{task_id}",
            {
                "walltime": task.walltime,
                "walltime_err": task.walltime_err,
                "walltime_err_n": 1 if task.walltime_err else 0,
            },
        )


def add_jobs(
    ds: Dataset,
    seeded: SeededDataset,
    post_job: Callable[[dict[str, Any]], str],
    post_task: Callable[[dict[str, Any]], str],
) -> None:
    """POST every job of ``ds`` and its tasks, recording the ids they get in ``seeded``.

    Each task depends on the one before, as IceProd's job materialization makes them.
    """
    for job_index in range(len(ds.jobs)):
        job_id = post_job({"dataset_id": seeded.dataset_id, "job_index": job_index})
        seeded.job_ids.append(job_id)
        task_ids: list[str] = []
        for task_index, tdef in enumerate(ds.task_defs):
            body = {
                "dataset_id": seeded.dataset_id,
                "job_id": job_id,
                "task_index": task_index,
                "job_index": job_index,
                "name": tdef.name,
                "depends": task_ids[-1:],
                "requirements": tdef.requirements(),
            }
            task_ids.append(post_task(body))
        seeded.task_ids.append(task_ids)


def moving_order(ds: Dataset, task_ids: list[list[str]]) -> list[tuple[Task, str]]:
    """Every task of ``ds`` with its id (by job), in the order they are moved out of idle.

    Every task starts idle. Tasks with a site go first, one at a time, so each is the only
    waiting task of its dataset when POST /task_actions/queue picks one.
    """
    tasks = [
        (job.tasks[i], task_ids[j][i])
        for j, job in enumerate(ds.jobs)
        for i in range(ds.tasks_per_job)
    ]
    return sorted(tasks, key=lambda tt: not tt[0].site)


def dataset_post_body(ds: Dataset) -> dict[str, Any]:
    """The POST /datasets body for ``ds`` (also used to load the simulator's Store)."""
    posted_jobs = ds.initial_jobs_submitted or ds.jobs_submitted
    body: dict[str, Any] = {
        "description": ds.description,
        "jobs_submitted": posted_jobs,
        "tasks_submitted": posted_jobs * ds.tasks_per_job,
        "tasks_per_job": ds.tasks_per_job,
        "group": ds.group,
        "username": ds.username,
    }
    if ds.auth_groups_read is not None:
        body["auth_groups_read"] = list(ds.auth_groups_read)
    if ds.always_active:
        body["always_active"] = True
    return body


def seed_dataset(api: Api, ds: Dataset, admin_token: Token) -> SeededDataset:
    dataset_id = api.call("POST", "/datasets", dataset_post_body(ds))["result"]
    base = f"/datasets/{dataset_id}"
    if ds.initial_jobs_submitted is not None:
        # Only roles admin/user may call this route; a system token gets 403.
        api.call(
            "PUT",
            base + "/jobs_submitted",
            {"jobs_submitted": ds.jobs_submitted},
            token=admin_token,
        )
    if ds.priority != 0.5:
        api.call("PUT", base + "/priority", {"priority": ds.priority})
    number = api.call("GET", base)["dataset"]
    seeded = SeededDataset(dataset_id=dataset_id, dataset=number)

    add_jobs(
        ds,
        seeded,
        post_job=lambda body: api.call("POST", "/jobs", body)["result"],
        post_task=lambda body: api.call("POST", "/tasks", body)["result"],
    )

    for task, task_id in moving_order(ds, seeded.task_ids):
        _move_task(api, dataset_id, task, task_id)

    for job, job_id in zip(ds.jobs, seeded.job_ids, strict=True):
        if job.status != "processing":
            api.call("PUT", f"{base}/jobs/{job_id}/status", {"status": job.status})

    if ds.truncated:  # before any final status: complete datasets cannot be truncated
        api.call("POST", base + "/dataset_actions/truncate")
    if ds.status != "processing":
        api.call("PUT", base + "/status", {"status": ds.status})
    return seeded


def seed_scenario(
    api_url: str, system_token: Token, admin_token: Token, scenario: Scenario = SCENARIO
) -> SeededScenario:
    """Seed ``scenario`` into a fresh server; raises SeedError on any failed call."""
    validate(scenario)
    api = Api(api_url, system_token)
    datasets = {ds.key: seed_dataset(api, ds, admin_token) for ds in scenario.datasets}
    grids: dict[str, str] = {}
    for grid in scenario.grids:
        grid_id = api.call(
            "POST",
            "/grids",
            {
                "host": grid.host,
                "queues": grid.queues,
                "version": grid.version,
                "debug": grid.debug,
            },
        )
        grids[grid.host] = grid_id["result"]
        if grid.patch:
            api.call("PATCH", f"/grids/{grids[grid.host]}", grid.patch)
    return SeededScenario(datasets=datasets, grids=grids, requests=api.count)
