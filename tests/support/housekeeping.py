"""IceProd states that show each housekeeping symptom, and healthy ones, for the real server.

Every dataset is seeded through the real REST API (``real_iceprod.seed``, one dataset at a
time: ``seed_scenario`` insists on the coverage of its own scenario, and this one must have no
task waiting, queued or processing anywhere) and then given a valid config, as a submitted
dataset has: IceProd's ``dataset_completion`` suspends a processing dataset without one and
stops there. The crons of IceProd never run unless a test runs them, so a seeded symptom stays
until then, as when the cron has stopped.

The rules are the mixin's, rendered from :data:`FAST`: the same expressions with ``for:`` and
the materialization window in seconds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from grafana.mixin import generate
from grafana.mixin.config import DEFAULT
from tests.support.real_iceprod.scenario import Dataset, Job, T, TaskDef
from tests.support.real_iceprod.seed import Api, SeededDataset, seed_dataset

#: the mixin's rules with the waits of a test: the expressions are the shipped ones
FAST = dataclasses.replace(
    DEFAULT,
    housekeeping_for="2s",
    queue_tasks_for="2s",
    materialization_window="5s",
)
#: alert -> the IceProd cron whose symptom it watches
HOUSEKEEPING = {
    "IceProdDatasetCompletionOverdue": "dataset_completion",
    "IceProdJobCompletionOverdue": "job_completion",
    "IceProdDatasetCleanupOverdue": "dataset_cleanup",
    "IceProdTaskQueueingStalled": "queue_tasks",
    "IceProdMaterializationStalled": "buffer_jobs_tasks",
}
#: the crons a test runs, in the order IceProd's schedule would have them catch up
CRONS = ("job_completion", "dataset_completion", "dataset_cleanup", "queue_tasks")

MAIN = TaskDef("main")
PHOTON = TaskDef("photon", gpu=1)


def _dataset(
    key: str,
    jobs_submitted: int,
    *jobs: Job,
    status: str = "processing",
    task_defs: tuple[TaskDef, ...] = (MAIN,),
    truncated: bool = False,
    always_active: bool = False,
    auth_groups_read: tuple[str, ...] | None = None,
) -> Dataset:
    """A dataset of simprod/alice described by its key."""
    return Dataset(
        key=key,
        description=key,
        group="simprod",
        username="alice",
        status=status,
        jobs_submitted=jobs_submitted,
        task_defs=task_defs,
        jobs=jobs,
        truncated=truncated,
        always_active=always_active,
        auth_groups_read=auth_groups_read,
    )


def _job(status: str, task: str) -> Job:
    return Job(status, (T(task),))


DATASETS = (
    # dataset_completion: every job materialized and complete, still processing
    _dataset("done", 2, _job("complete", "complete"), _job("complete", "complete")),
    # ... truncated after 2 of 5 jobs: completed on those
    _dataset(
        "done_truncated",
        5,
        _job("complete", "complete"),
        _job("complete", "complete"),
        truncated=True,
    ),
    # healthy for dataset_completion: a job still to materialize (and none processing, so
    # buffer_jobs_tasks would materialize it: a symptom of that cron); always active
    _dataset("unfinished", 3, _job("complete", "complete"), _job("complete", "complete")),
    _dataset("always", 1, _job("complete", "complete"), always_active=True),
    # job_completion: jobs processing, every task complete
    _dataset("stuck_jobs", 2, _job("processing", "complete"), _job("processing", "complete")),
    # healthy: a job with a task to run (plain users may not read this one)
    _dataset("running", 1, _job("processing", "idle"), auth_groups_read=()),
    # dataset_cleanup: suspended with a job processing
    _dataset("halted", 1, _job("processing", "suspended"), status="suspended"),
    # healthy: suspended and cleaned up; in errors with its task failed
    _dataset("halted_clean", 1, _job("suspended", "suspended"), status="suspended"),
    _dataset("in_errors", 1, _job("errors", "failed"), status="errors"),
    # queue_tasks: a GPU task idle, and every active task of IceProd idle
    _dataset("gpu_idle", 1, _job("processing", "idle"), task_defs=(PHOTON,)),
    # buffer_jobs_tasks: 1 of 10 jobs materialized
    _dataset("unbuffered", 10, _job("processing", "idle")),
    # healthy: suspended with jobs to materialize (buffer_jobs_tasks asks for processing
    # datasets only)
    _dataset("paused", 10, _job("suspended", "suspended"), status="suspended"),
    # progress and time to completion: truncated after 3 of 10 jobs, one complete
    _dataset(
        "truncated_running",
        10,
        _job("complete", "complete"),
        _job("processing", "idle"),
        _job("processing", "idle"),
        truncated=True,
    ),
    _dataset("finished", 1, _job("complete", "complete"), status="complete"),
)

#: (alert, dataset key, or resource kind for IceProd-wide alerts) firing before the crons ran
SYMPTOMS = frozenset(
    {
        ("IceProdDatasetCompletionOverdue", "done"),
        ("IceProdDatasetCompletionOverdue", "done_truncated"),
        ("IceProdJobCompletionOverdue", "stuck_jobs"),
        ("IceProdDatasetCleanupOverdue", "halted"),
        ("IceProdTaskQueueingStalled", "gpu"),
        ("IceProdTaskQueueingStalled", "cpu"),
        ("IceProdMaterializationStalled", "unbuffered"),
        ("IceProdMaterializationStalled", "unfinished"),
    }
)
#: ... and after them: materialization needs IceProd's materialization service, not a cron
AFTER_CRONS = frozenset(
    {
        ("IceProdMaterializationStalled", "unbuffered"),
        ("IceProdMaterializationStalled", "unfinished"),
    }
)
#: dataset key -> status once the crons ran (the datasets they change)
STATUS_AFTER_CRONS = {
    "done": "complete",
    "done_truncated": "complete",
    "stuck_jobs": "complete",  # job_completion completes its jobs, then dataset_completion it
    "unfinished": "processing",
    "always": "processing",
    "truncated_running": "processing",
}


def seed(api_url: str, token: str, admin_token: str) -> dict[str, SeededDataset]:
    """Seed :data:`DATASETS` through the REST API, each with a valid config; by key."""
    api = Api(api_url, token)
    seeded = {}
    for dataset in DATASETS:
        seeded[dataset.key] = seed_dataset(api, dataset, admin_token)
        config = {
            "version": 3.2,
            "description": dataset.description,
            "options": {},
            "steering": {"parameters": {}},
            "tasks": [{"name": t.name, "trays": [{"modules": [{}]}]} for t in dataset.task_defs],
        }
        api.call("PUT", f"/config/{seeded[dataset.key].dataset_id}", config)
    return seeded


def fast_rules(directory: Path) -> list[Path]:
    """The rule files rendered from :data:`FAST` into ``directory``."""
    paths = []
    for name, text in generate.rule_files(FAST).items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths
