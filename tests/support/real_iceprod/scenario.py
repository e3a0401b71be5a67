"""The seeded IceProd scenario: plain data, defined once.

``seed.py`` loads it through the real REST API and ``expected.py`` derives the expected API
answers from it independently. Walltimes are exact binary fractions so float sums are exact
and ``int()`` truncations in dataset_monitor are never borderline.

Coverage (checked by :func:`validate`):

- datasets in every status (processing, suspended, errors, complete), one truncated, one
  processing dataset with no materialized job, one whose ``jobs_submitted`` was raised later;
- several task names per dataset, including ``requirements.gpu == 1`` task names;
- every job and task status somewhere, while most datasets lack some statuses;
- ``jobs_submitted`` above the number of materialized jobs;
- completed tasks with walltimes (some with ``walltime_err``), so ``task_stats`` has data;
- one processing dataset that plain IceCube users may not read (``auth_groups_read=[]``);
- one always-active dataset whose one task name completed without reporting walltime;
- two grids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DATASET_STATUSES = ("processing", "suspended", "errors", "complete")
JOB_STATUSES = ("processing", "suspended", "errors", "complete")
TASK_STATUSES = ("idle", "waiting", "queued", "processing", "suspended", "failed", "complete")
QUEUED_OR_LATER = ("queued", "processing", "failed", "complete")
ACTIVE_TASK_STATUSES = ("idle", "waiting", "queued", "processing")


@dataclass(frozen=True)
class TaskDef:
    """A task name of a dataset (one task of this name per job)."""

    name: str
    gpu: int = 0

    def requirements(self) -> dict[str, Any]:
        """Requirements dict as the materialization service would store it."""
        return {"cpu": 1, "gpu": self.gpu, "memory": 2.0, "disk": 10.0, "time": 1.0}


@dataclass(frozen=True)
class Task:
    """One task: final status, walltime hours (set by PATCH when non-zero) and site.

    A task with a ``site`` is moved waiting -> queued by POST /task_actions/queue (as a grid
    does, which sets ``site``); other tasks only walk PUT /tasks/{id}/status.
    """

    status: str
    walltime: float = 0.0
    walltime_err: float = 0.0
    site: str = ""


@dataclass(frozen=True)
class Job:
    """One materialized job; ``tasks[i]`` belongs to the dataset's ``task_defs[i]``."""

    status: str
    tasks: tuple[Task, ...]


@dataclass(frozen=True)
class Dataset:
    """One dataset. Its dataset number is its 1-based position in the scenario."""

    key: str
    description: str
    group: str
    username: str
    status: str
    jobs_submitted: int
    task_defs: tuple[TaskDef, ...]
    jobs: tuple[Job, ...] = ()
    truncated: bool = False
    #: POST /datasets ``always_active`` (it can only be set there)
    always_active: bool = False
    priority: float = 0.5
    # When set, POST with this value, then raise it to jobs_submitted with
    # PUT /datasets/{id}/jobs_submitted (an admin-only, transactional route).
    initial_jobs_submitted: int | None = None
    # POST /datasets ``auth_groups_read``; None = the server default ['users']. The read ACL
    # becomes {admin, group} | auth_groups_read, plus the submitting user.
    auth_groups_read: tuple[str, ...] | None = None

    @property
    def readable_by_users(self) -> bool:
        """Whether group ``users`` (every /institutions/IceCube... member) may read it."""
        groups = ("users",) if self.auth_groups_read is None else self.auth_groups_read
        return self.group == "users" or "users" in groups

    @property
    def tasks_per_job(self) -> int:
        """Tasks per job: one per task name."""
        return len(self.task_defs)


@dataclass(frozen=True)
class Grid:
    """A grid registration (POST /grids), optionally refreshed with PATCH."""

    host: str
    queues: dict[str, str]
    version: str
    debug: bool = False
    patch: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    """Everything the seed loads."""

    datasets: tuple[Dataset, ...]
    grids: tuple[Grid, ...]


def T(status: str, walltime: float = 0.0, err: float = 0.0, site: str = "") -> Task:
    """Shorthand for a Task in the tables below."""
    return Task(status, walltime, err, site)


GENERATE, FILTER, RECO_GPU = TaskDef("generate"), TaskDef("filter"), TaskDef("reco_gpu", gpu=1)

SCENARIO = Scenario(
    datasets=(
        Dataset(
            key="sim_active",
            description="CORSIKA in-ice 20904 (active)",
            group="simprod",
            username="alice",
            status="processing",
            initial_jobs_submitted=8,
            jobs_submitted=10,
            task_defs=(GENERATE, FILTER, RECO_GPU),
            jobs=(
                Job("complete", (T("complete", 1.5, 0.25), T("complete", 0.5), T("complete", 2.0))),
                Job("processing", (T("complete", 1.75), T("processing", site="OSG"), T("idle"))),
                Job("processing", (T("complete", 1.25), T("queued", site="NPX"), T("idle"))),
                Job("processing", (T("waiting"), T("idle"), T("idle"))),
                Job("errors", (T("complete", 1.0), T("failed", 0.0, 0.5), T("idle"))),
            ),
        ),
        Dataset(
            key="filter_truncated",
            description="Level2 pass2 IC86.2020 (truncated)",
            group="filtering",
            username="bob",
            status="processing",
            truncated=True,
            jobs_submitted=6,
            task_defs=(TaskDef("level2"), TaskDef("level3")),
            jobs=(
                Job("complete", (T("complete", 0.875, site="NPX"), T("complete", 0.25))),
                Job("suspended", (T("suspended"), T("suspended"))),
                Job("processing", (T("processing"), T("idle"))),
                Job("processing", (T("queued"), T("idle"))),
                Job("processing", (T("waiting"), T("idle"))),
            ),
        ),
        Dataset(
            key="sim_empty",
            description="Newly submitted, nothing materialized yet",
            group="simprod",
            username="alice",
            status="processing",
            jobs_submitted=3,
            task_defs=(GENERATE,),
        ),
        Dataset(
            key="sim_suspended",
            description="NuGen 21217 (suspended)",
            group="simprod",
            username="carol",
            status="suspended",
            jobs_submitted=2,
            task_defs=(TaskDef("corsika"), TaskDef("detector")),
            jobs=(
                Job("suspended", (T("complete", 3.5), T("suspended"))),
                Job("processing", (T("waiting"), T("idle"))),
            ),
        ),
        Dataset(
            key="user_errors",
            description="User test dataset (errors)",
            group="users",
            username="dave",
            status="errors",
            jobs_submitted=3,
            task_defs=(TaskDef("process"),),
            jobs=(
                Job("errors", (T("failed", 0.0, 0.125),)),
                Job("complete", (T("complete", 0.375),)),
                Job("processing", (T("waiting"),)),
            ),
        ),
        Dataset(
            key="sim_complete",
            description="MuonGun 21315 (complete)",
            group="simprod",
            username="alice",
            status="complete",
            priority=0.75,
            jobs_submitted=2,
            task_defs=(GENERATE, RECO_GPU),
            jobs=(
                Job("complete", (T("complete", 2.25), T("complete", 1.5))),
                Job("complete", (T("complete", 2.75, 0.5), T("complete", 1.25))),
            ),
        ),
        Dataset(
            key="sim_restricted",
            description="IceTop 21500 (simprod only)",
            group="simprod",
            username="frank",
            status="processing",
            priority=0.25,
            jobs_submitted=4,
            task_defs=(GENERATE, RECO_GPU),
            auth_groups_read=(),
            jobs=(
                Job("complete", (T("complete", 0.625), T("complete", 0.75, 0.25))),
                Job("processing", (T("complete", 0.375), T("queued"))),
                Job("processing", (T("processing"), T("idle"))),
            ),
        ),
        Dataset(
            key="filter_always",
            description="Realtime L2 stream (always active)",
            group="filtering",
            username="bob",
            status="processing",
            always_active=True,
            jobs_submitted=2,
            task_defs=(TaskDef("online"),),
            jobs=(Job("complete", (T("complete"),)), Job("processing", (T("queued", site="NPX"),))),
        ),
    ),
    grids=(
        Grid(host="npx.icecube.wisc.edu", queues={"npx": "condor"}, version="3.2.43"),
        Grid(
            host="osg-submit.icecube.wisc.edu",
            queues={"osg": "condor", "osg-gpu": "condor"},
            version="3.2.42",
            debug=True,
            patch={"version": "3.2.43"},
        ),
    ),
)


def validate(scenario: Scenario = SCENARIO) -> None:
    """Fail fast on a malformed scenario and on lost coverage."""
    keys = [d.key for d in scenario.datasets]
    assert len(set(keys)) == len(keys), "dataset keys must be unique"
    job_seen: set[str] = set()
    task_seen: set[str] = set()
    for ds in scenario.datasets:
        assert ds.status in DATASET_STATUSES, ds.key
        assert len(ds.jobs) <= ds.jobs_submitted, f"{ds.key}: more jobs than jobs_submitted"
        for job in ds.jobs:
            assert job.status in JOB_STATUSES, ds.key
            assert len(job.tasks) == ds.tasks_per_job, f"{ds.key}: one task per task_def"
            job_seen.add(job.status)
            task_seen.update(t.status for t in job.tasks)
            assert all(t.status in TASK_STATUSES for t in job.tasks), ds.key
            assert all(t.status in QUEUED_OR_LATER for t in job.tasks if t.site), ds.key
    assert {d.status for d in scenario.datasets} == set(DATASET_STATUSES)
    assert job_seen == set(JOB_STATUSES)
    assert task_seen == set(TASK_STATUSES)
    assert any(d.truncated for d in scenario.datasets)
    assert any(d.always_active for d in scenario.datasets)
    assert any(td.gpu for d in scenario.datasets for td in d.task_defs)
    assert any(d.jobs_submitted > len(d.jobs) for d in scenario.datasets)
    assert any(not d.readable_by_users and d.status != "complete" for d in scenario.datasets)
    assert len(scenario.grids) >= 2
