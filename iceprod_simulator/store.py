"""In-memory IceProd collections whose documents look exactly like the real server's."""

import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import count
from typing import Any

from iceprod_simulator.access import SYSTEM_USER

Doc = dict[str, Any]
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"  # UTC, no zone: iceprod.server.util.nowstr


def nowstr() -> str:
    """Current UTC time the way IceProd writes dates."""
    return datetime.now(UTC).strftime(DATE_FORMAT)


def uuid1_hex() -> str:
    """A new id the way IceProd makes them."""
    return uuid.uuid1().hex


# what each POST handler requires in its body
DATASET_REQUIRED = ("description", "jobs_submitted", "tasks_submitted", "tasks_per_job", "group")
JOB_REQUIRED = ("dataset_id", "job_index")
TASK_REQUIRED = (
    "dataset_id",
    "job_id",
    "task_index",
    "job_index",
    "name",
    "depends",
    "requirements",
)
GRID_REQUIRED = ("host", "queues", "version")


def compose(
    required: tuple[str, ...], fields: Mapping[str, Any], defaults: Mapping[str, Any]
) -> Doc:
    """A stored document: the given keys as given, then the server's values for the others.

    `fields` is a POST body, to which the server appends what it fills in (in `defaults`
    order), or a whole document as the server returns it, kept as is. Change stored documents
    with dict.update: like Mongo's $set it keeps each key's position and appends new keys.
    """
    missing = next((k for k in required if k not in fields), None)
    if missing is not None:
        raise ValueError(f"missing key: {missing}")
    return {**fields, **{k: v for k, v in defaults.items() if k not in fields}}


@dataclass
class DatasetAuth:
    """The attr_auths entry POST /datasets writes for a dataset."""

    read_groups: list[str]
    write_groups: list[str]
    read_users: list[str]
    write_users: list[str]


class Store:
    """Datasets, jobs, tasks, grids, configs and dataset ACLs; hold `lock` to read or change."""

    def __init__(self, new_id: Callable[[], str] = uuid1_hex, clock: Callable[[], str] = nowstr):
        """Use `new_id` for document ids and `clock` for dates (seed them for determinism)."""
        self.new_id = new_id
        self.clock = clock
        self.lock = threading.RLock()
        self.datasets: dict[str, Doc] = {}
        self.jobs: dict[str, Doc] = {}
        self.tasks: dict[str, Doc] = {}
        self.grids: dict[str, Doc] = {}
        self.configs: dict[str, Doc] = {}
        self.auth: dict[str, DatasetAuth] = {}
        self._dataset_numbers = count(1)
        self._jobs_by_dataset: defaultdict[str, list[Doc]] = defaultdict(list)
        self._tasks_by_dataset: defaultdict[str, list[Doc]] = defaultdict(list)
        self._tasks_by_job: defaultdict[str, list[Doc]] = defaultdict(list)

    def add_dataset(self, fields: Mapping[str, Any]) -> str:
        """Add a dataset like POST /datasets by a system token; return its dataset_id.

        `auth_groups_read` (default ['users']) sets the read ACL as the server does.
        """
        body = dict(fields)
        read_groups = body.pop("auth_groups_read", ["users"])
        with self.lock:
            doc = compose(
                DATASET_REQUIRED,
                body,
                {
                    "dataset_id": self.new_id(),
                    "dataset": next(self._dataset_numbers),
                    "status": "processing",
                    "start_date": self.clock(),
                    "username": SYSTEM_USER,
                    "priority": 0.5,
                    "debug": False,
                    "jobs_immutable": False,
                    "truncated": False,
                    "always_active": False,
                },
            )
            group = doc["group"]
            dataset_id: str = doc["dataset_id"]
            self.datasets[dataset_id] = doc
            self.auth[dataset_id] = DatasetAuth(
                read_groups=sorted({"admin", group} | set(read_groups)),
                write_groups=sorted({"admin", group}) if group != "users" else ["admin"],
                read_users=[doc["username"]],
                write_users=[doc["username"]],
            )
        return dataset_id

    def add_job(self, fields: Mapping[str, Any]) -> str:
        """Add a job like POST /jobs; return its job_id."""
        with self.lock:
            doc = compose(
                JOB_REQUIRED,
                fields,
                {"job_id": self.new_id(), "status": "processing", "status_changed": self.clock()},
            )
            self.jobs[doc["job_id"]] = doc
            self._jobs_by_dataset[doc["dataset_id"]].append(doc)
        job_id: str = doc["job_id"]
        return job_id

    def add_task(self, fields: Mapping[str, Any]) -> str:
        """Add a task like POST /tasks; return its task_id."""
        with self.lock:
            doc = compose(
                TASK_REQUIRED,
                fields,
                {
                    "task_id": self.new_id(),
                    "status_changed": self.clock(),
                    "failures": 0,
                    "evictions": 0,
                    "walltime": 0.0,
                    "walltime_err": 0.0,
                    "walltime_err_n": 0,
                    "site": "",
                    "status": "idle",
                    "priority": 1.0,
                    "instance_id": "",
                },
            )
            self.tasks[doc["task_id"]] = doc
            self._tasks_by_dataset[doc["dataset_id"]].append(doc)
            self._tasks_by_job[doc["job_id"]].append(doc)
        task_id: str = doc["task_id"]
        return task_id

    def add_grid(self, fields: Mapping[str, Any]) -> str:
        """Add a grid like POST /grids; return its grid_id."""
        with self.lock:
            now = self.clock()
            doc = compose(
                GRID_REQUIRED,
                fields,
                {"grid_id": self.new_id(), "start_date": now, "last_update": now, "debug": False},
            )
            self.grids[doc["grid_id"]] = doc
        grid_id: str = doc["grid_id"]
        return grid_id

    def set_config(self, dataset_id: str, config: Mapping[str, Any]) -> None:
        """Store a dataset config like PUT /config/{dataset_id}."""
        with self.lock:
            self.configs[dataset_id] = {**config, "dataset_id": dataset_id}

    def jobs_of(self, dataset_id: str) -> list[Doc]:
        """A dataset's jobs in insertion order."""
        return self._jobs_by_dataset.get(dataset_id, [])

    def tasks_of(self, dataset_id: str) -> list[Doc]:
        """A dataset's tasks in insertion order."""
        return self._tasks_by_dataset.get(dataset_id, [])

    def tasks_of_job(self, job_id: str) -> list[Doc]:
        """A job's tasks in insertion order."""
        return self._tasks_by_job.get(job_id, [])
