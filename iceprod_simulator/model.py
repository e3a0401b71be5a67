"""A moving IceProd world: generated datasets whose jobs and tasks progress tick by tick."""

import random
import uuid
from collections.abc import Callable
from typing import Any

from iceprod_simulator.store import Doc, Store

# (name, requirements, typical walltime in hours) of the tasks a job can have, in task order
TASK_KINDS: tuple[tuple[str, dict[str, Any], float], ...] = (
    ("generate", {"cpu": 1, "memory": 2.0, "disk": 10.0, "time": 4.0}, 2.0),
    ("filter", {"cpu": 1, "memory": 4.0, "disk": 20.0, "time": 2.0}, 1.0),
    ("gpu-step", {"cpu": 1, "gpu": 1, "memory": 8.0, "disk": 10.0, "time": 1.0}, 0.5),
)
_TYPICAL_HOURS = {name: hours for name, _, hours in TASK_KINDS}
# chance per tick that a task in the key status moves to the value status
_FLOW = {"idle": ("waiting", 0.5), "waiting": ("queued", 0.4), "queued": ("processing", 0.4)}
_P_COMPLETE = 0.3  # per tick, for a processing task
# An error in IceProd 3.x either resets the task (a transient reason: back to waiting, failures
# + 1, requirements raised to 1.5x) or fails it for good: failed waits for a person.
_P_TRANSIENT = 0.8  # share of errors that reset the task
_RAISED = ("memory", "time")  # requirements a reset raises (IceProd also raises disk, cpu)
_P_MATERIALIZE = 0.5  # per tick, for a dataset with jobs left to create
_MATERIALIZE_BATCH = 2
_FAIL_RATE = 0.02  # per tick, for a processing task of a healthy dataset
_BROKEN_FAIL_RATE = 0.4
_P_BROKEN = 0.05  # share of datasets whose tasks fail a lot
_P_SEEDED_RETRY = 0.1  # share of generated complete tasks that were reset once before
_GROUPS = ("simprod", "filtering", "users")
_USERNAMES = ("alice", "bob", "carol", "dave")
_STATUS_WEIGHTS = {"processing": 75, "suspended": 7, "errors": 6, "complete": 12}
_P_SUBMIT = 0.3  # per tick, while fewer datasets are processing than at the start
# Quiet and busy datasets: in production most processing datasets sit quiet for hours (nothing
# moves, counts unchanged: held, throttled or waiting on a site) beside a few busy ones. A busy
# dataset goes quiet with this chance per tick; a quiet one wakes with the chance that keeps
# `busy_share` of the processing datasets busy on average.
_P_QUIET = 0.02


def seeded_ids(rng: random.Random) -> Callable[[], str]:
    """An id factory giving uuid1-shaped hex ids from `rng`."""
    return lambda: uuid.UUID(int=rng.getrandbits(128), version=1).hex


def _hours(rng: random.Random, name: str) -> float:
    """A walltime in hours for a task called `name`."""
    return round(rng.uniform(0.5, 1.5) * _TYPICAL_HOURS.get(name, 1.0), 4)


def _materialize_job(store: Store, dataset: Doc, job_index: int) -> tuple[Doc, list[Doc]]:
    """Create a job and its idle tasks from the dataset config, as materialization does."""
    dataset_id = dataset["dataset_id"]
    job_id = store.add_job({"dataset_id": dataset_id, "job_index": job_index})
    task_ids: list[str] = []
    for task_index, task in enumerate(store.configs[dataset_id]["tasks"]):
        task_ids.append(
            store.add_task(
                {
                    "dataset_id": dataset_id,
                    "job_id": job_id,
                    "task_index": task_index,
                    "job_index": job_index,
                    "name": task.get("name") or str(task_index),
                    "depends": task_ids[-1:],
                    "requirements": dict(task.get("requirements", {})),
                }
            )
        )
    return store.jobs[job_id], [store.tasks[t] for t in task_ids]


def _complete(rng: random.Random, task: Doc, now: str) -> None:
    """Finish a task with a walltime."""
    task.update(status="complete", status_changed=now, walltime=_hours(rng, task["name"]))


def _error(rng: random.Random, task: Doc, now: str, transient: bool) -> None:
    """An attempt ended in an error, its time charged to walltime_err.

    A transient error resets the task to waiting with its requirements raised, as
    ``TasksActionsErrorHandler`` does; any other makes it failed, which IceProd never retries.
    """
    task.update(
        status="waiting" if transient else "failed",
        status_changed=now,
        failures=task["failures"] + 1,
        walltime_err=round(task["walltime_err"] + _hours(rng, task["name"]) / 2, 4),
        walltime_err_n=task["walltime_err_n"] + 1,
    )
    if transient:
        requirements = task["requirements"]
        for key in _RAISED:
            if isinstance(requirements.get(key), int | float):
                requirements[key] = round(requirements[key] * 1.5, 4)


def _job_status(tasks: list[Doc]) -> str:
    """The status a job's tasks imply (for jobs that are not suspended)."""
    if all(t["status"] == "complete" for t in tasks):
        return "complete"
    if any(t["status"] == "failed" for t in tasks):
        return "errors"  # its later tasks wait on the failed one, which waits for a person
    return "processing"


def _seed_job(rng: random.Random, store: Store, dataset: Doc, job_index: int, now: str) -> None:
    """Create a job part-way through, in a state that fits its dataset's status."""
    job, tasks = _materialize_job(store, dataset, job_index)
    status = dataset["status"]
    done = len(tasks) if status == "complete" else rng.randint(0, len(tasks))
    for task in tasks[:done]:
        if rng.random() < _P_SEEDED_RETRY:
            _error(rng, task, now, transient=True)
        _complete(rng, task, now)
    if done < len(tasks):
        current = tasks[done]
        if status == "errors":
            _error(rng, current, now, transient=False)
        elif status == "suspended":
            current.update(status="suspended", status_changed=now)
        else:
            picked = rng.choice(("idle", "waiting", "queued", "processing", "failed"))
            if picked == "failed":
                _error(rng, current, now, transient=False)
            else:
                current.update(status=picked, status_changed=now)
    job_status = _job_status(tasks)
    if status == "suspended" and job_status == "processing":
        job_status = "suspended"
    job.update(status=job_status, status_changed=now)


def _seed_dataset(
    rng: random.Random, store: Store, index: int, truncated: bool, status: str | None = None
) -> None:
    """Create one dataset (of a random status unless given) with its config and jobs."""
    weights = list(_STATUS_WEIGHTS.values())
    if truncated:
        status = "processing"
    elif status is None:
        status = rng.choices(list(_STATUS_WEIGHTS), weights)[0]
    kinds = TASK_KINDS[: rng.randint(1, len(TASK_KINDS))]
    jobs_submitted = rng.randint(1, 60)
    dataset_id = store.add_dataset(
        {
            "description": f"simulated dataset {index}",
            "jobs_submitted": jobs_submitted,
            "tasks_submitted": jobs_submitted * len(kinds),
            "tasks_per_job": len(kinds),
            "group": rng.choice(_GROUPS),
            "username": rng.choice(_USERNAMES),
            "status": status,
        }
    )
    dataset = store.datasets[dataset_id]
    dataset["truncated"] = truncated  # the truncate action, after submission
    store.set_config(
        dataset_id,
        {
            "version": 3.2,
            "description": f"simulated dataset {index}",
            "options": {},
            "steering": {"parameters": {}},
            "tasks": [{"name": n, "requirements": r, "trays": []} for n, r, _ in kinds],
        },
    )
    # a truncated dataset keeps at least one job, so it has something to finish
    materialized = (
        rng.randint(int(truncated), jobs_submitted) if status == "processing" else jobs_submitted
    )
    now = store.clock()
    for job_index in range(materialized):
        _seed_job(rng, store, dataset, job_index, now)


def build_store(datasets: int, seed: int = 0) -> Store:
    """Generate `datasets` datasets of mixed statuses; the first is processing and truncated.

    No grids: IceProd 3.x has no component that registers one (`/grids` stays empty).
    """
    rng = random.Random(seed)
    store = Store(new_id=seeded_ids(random.Random(seed + 1)))
    with store.lock:
        for index in range(datasets):
            _seed_dataset(rng, store, index, truncated=index == 0)
    return store


class Simulation:
    """Advances a Store one tick at a time, deterministically from the seed.

    Only busy processing datasets move. With `busy_share` 1 every one is busy; below 1 each is
    busy or quiet (see `_P_QUIET`), starting busy with chance `busy_share`.
    """

    def __init__(self, store: Store, seed: int = 0, busy_share: float = 1.0):
        """Simulate `store` with a random stream seeded by `seed`."""
        if not 0.0 < busy_share <= 1.0:
            raise ValueError("busy_share must be in (0, 1]")
        self.store = store
        self.ticks = 0
        self._rng = random.Random(seed)
        self._fail_rates: dict[str, float] = {}
        self._busy_share = busy_share
        self._p_wake = _P_QUIET * busy_share / (1.0 - busy_share) if busy_share < 1 else 1.0
        self._busy: dict[str, bool] = {}
        #: a paused world does not move (benchmarks compare clients on the same state)
        self.paused = False
        # new submissions replace finished datasets, so a long demo keeps moving
        self._processing_target = self._processing()

    def _processing(self) -> int:
        return sum(d["status"] == "processing" for d in self.store.datasets.values())

    def step(self) -> None:
        """One tick: tasks move on, jobs and datasets settle, jobs materialize."""
        if self.paused:
            return
        store = self.store
        with store.lock:
            now = store.clock()
            for dataset in list(store.datasets.values()):
                if dataset["status"] == "processing" and self._moves(dataset["dataset_id"]):
                    self._advance(dataset, now)
            if self._processing() < self._processing_target and self._rng.random() < _P_SUBMIT:
                index = len(store.datasets)
                _seed_dataset(self._rng, store, index, truncated=False, status="processing")
            self.ticks += 1

    def busy(self) -> int:
        """How many processing datasets are busy now."""
        return sum(
            self._busy.get(d["dataset_id"], True)
            for d in self.store.datasets.values()
            if d["status"] == "processing"
        )

    def _moves(self, dataset_id: str) -> bool:
        """Whether a processing dataset is busy this tick (and switch it quiet or busy)."""
        if self._busy_share >= 1.0:
            return True
        busy = self._busy.get(dataset_id)
        if busy is None:
            busy = self._rng.random() < self._busy_share
        elif self._rng.random() < (_P_QUIET if busy else self._p_wake):
            busy = not busy
        self._busy[dataset_id] = busy
        return busy

    def _advance(self, dataset: Doc, now: str) -> None:
        """Move a processing dataset's open jobs along, then materialize and settle it."""
        store = self.store
        dataset_id = dataset["dataset_id"]
        fail_rate = self._fail_rates.setdefault(
            dataset_id, _BROKEN_FAIL_RATE if self._rng.random() < _P_BROKEN else _FAIL_RATE
        )
        jobs = store.jobs_of(dataset_id)
        for job in jobs:
            if job["status"] == "processing":
                self._advance_job(job, fail_rate, now)
        # materialization builds jobs from the dataset config; without one it cannot
        materializable = dataset_id in store.configs and not dataset["truncated"]
        if materializable and self._rng.random() < _P_MATERIALIZE:
            last = min(len(jobs) + _MATERIALIZE_BATCH, dataset["jobs_submitted"])
            for job_index in range(len(jobs), last):
                _materialize_job(store, dataset, job_index)
        self._settle(dataset)

    def _advance_job(self, job: Doc, fail_rate: float, now: str) -> None:
        """Move the job's first unfinished task (later ones wait on it), then its status."""
        tasks = self.store.tasks_of_job(job["job_id"])
        task = next((t for t in tasks if t["status"] != "complete"), None)
        if task is not None:
            self._advance_task(task, fail_rate, now)
        job_status = _job_status(tasks)
        if job_status != job["status"]:
            job.update(status=job_status, status_changed=now)

    def _advance_task(self, task: Doc, fail_rate: float, now: str) -> None:
        """Maybe move one task a step along its life."""
        rng = self._rng
        status = task["status"]
        if status in _FLOW:
            target, chance = _FLOW[status]
            if rng.random() < chance:
                task.update(status=target, status_changed=now)
        elif status == "processing":
            roll = rng.random()
            if roll < fail_rate:
                _error(rng, task, now, transient=rng.random() < _P_TRANSIENT)
            elif roll < fail_rate + _P_COMPLETE:
                _complete(rng, task, now)

    def _settle(self, dataset: Doc) -> None:
        """Complete or fail a dataset once all its jobs exist and none is still running."""
        jobs = self.store.jobs_of(dataset["dataset_id"])
        if dataset["always_active"]:
            return
        if len(jobs) < dataset["jobs_submitted"] and not dataset["truncated"]:
            return
        statuses = {j["status"] for j in jobs}
        if statuses <= {"complete"}:
            dataset["status"] = "complete"
        elif not statuses & {"processing", "suspended"}:
            dataset["status"] = "errors"
