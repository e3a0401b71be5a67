"""What the exporter says, checked against what IceProd 3.2.43's own code does.

The real REST server (tests/support/real_iceprod/README.md), seeded through its API, and IceProd's
real ``dataset_completion`` cron run once in the server's venv, so the meanings the exporter's help
texts and the mixin rely on are IceProd's, not our reading of its code:

- a truncated dataset whose materialized jobs are complete is completed by the cron, although
  ``jobs_submitted`` says more jobs were to come; an always-active one never is; a dataset
  with jobs still to materialize is left processing;
- truncation does not stop materialization in 3.2.43: asked for one dataset, as
  ``buffer_jobs_tasks`` asks for every processing one, it materializes a truncated dataset too
  (so the help texts say only what dataset_completion does with it);
- ``?gpu=true|false`` splits the IceProd-wide active tasks by ``requirements.gpu >= 1``, as
  the exporter's ``iceprod_active_tasks`` reports them;
- a reset (a transient error) sends a task back to ``waiting`` with ``failures`` + 1 and its
  requirements raised, and never counts as ``failed``; a failed task is ``failed`` at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from iceprod_simulator import OIDCIssuer
from tests.support.exporter import run_once
from tests.support.real_iceprod.harness import SYSTEM_CLAIMS, RealIceProd, fetch_token
from tests.support.real_iceprod.seed import TASK_PATHS

AUDIENCE = "iceprod"
CLIENT = "semantics-exporter"
SECRET = "semantics-Secret-5c1e9a7b"

Call = Callable[..., Any]
#: (task name, GPUs it requires, final status) of each task of one job
JobTasks = tuple[tuple[str, int, str], ...]


@dataclass
class Seeded:
    """The server with its datasets, by the test's names."""

    issuer: OIDCIssuer
    api: RealIceProd
    call: Call
    ids: dict[str, str]
    numbers: dict[str, str]


def _client(url: str, token: str) -> Call:
    session = requests.Session()
    session.headers["Authorization"] = "Bearer " + token

    def call(method: str, path: str, body: Any = None) -> Any:
        r = session.request(method, url + path, json=body, timeout=30)
        assert r.status_code in (200, 201), f"{method} {path} -> {r.status_code}: {r.text[:300]}"
        return r.json() if r.content else None

    return call


def _dataset(
    call: Call, name: str, jobs_submitted: int, jobs: tuple[JobTasks, ...], **fields: Any
) -> str:
    """POST a dataset with a valid config, its jobs and tasks, and walk each task."""
    names = [task[0] for task in jobs[0]]
    body = {
        "description": name,
        "jobs_submitted": jobs_submitted,
        "tasks_submitted": jobs_submitted * len(names),
        "tasks_per_job": len(names),
        "group": "simprod",
        "username": "alice",
        **fields,
    }
    dataset_id: str = call("POST", "/datasets", body)["result"]
    config = {
        "version": 3.2,
        "description": name,
        "options": {},
        "steering": {"parameters": {}},
        "tasks": [{"name": n, "trays": [{"modules": [{}]}]} for n in names],
    }
    call("PUT", f"/config/{dataset_id}", config)
    for job_index, tasks in enumerate(jobs):
        job_id = call("POST", "/jobs", {"dataset_id": dataset_id, "job_index": job_index})["result"]
        for task_index, (task_name, gpu, status) in enumerate(tasks):
            task = {
                "dataset_id": dataset_id,
                "job_id": job_id,
                "task_index": task_index,
                "job_index": job_index,
                "name": task_name,
                "depends": [],
                "requirements": {"cpu": 1, "gpu": gpu, "memory": 2.0, "time": 1.0},
            }
            task_id = call("POST", "/tasks", task)["result"]
            for step in TASK_PATHS[status]:
                call("PUT", f"/tasks/{task_id}/status", {"status": step})
        if all(status == "complete" for _, _, status in tasks):
            call("PUT", f"/datasets/{dataset_id}/jobs/{job_id}/status", {"status": "complete"})
    return dataset_id


def _done(name: str) -> JobTasks:
    return ((name, 0, "complete"),)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    tmp = tmp_path_factory.mktemp("real-iceprod-semantics")
    with OIDCIssuer(token_ttl=600, audience=AUDIENCE) as issuer:
        issuer.register_client(CLIENT, SECRET, SYSTEM_CLAIMS)
        with RealIceProd(issuer.url, AUDIENCE, log_dir=tmp, prometheus=False) as api:
            call = _client(api.url, fetch_token(issuer.url, CLIENT, SECRET))
            ids = {
                # 2 of 5 jobs materialized, both complete, then truncated
                "truncated": _dataset(call, "truncated", 5, (_done("level2"), _done("level2"))),
                # every materialized job complete, but one job still to materialize
                "unfinished": _dataset(call, "unfinished", 3, (_done("gen"), _done("gen"))),
                # truncated with 1 of 3 jobs materialized, that one still running
                "truncated_running": _dataset(
                    call, "truncated running", 3, ((("level2", 0, "processing"),),)
                ),
                # every job materialized and complete, but IceProd never completes it
                "always": _dataset(
                    call, "always", 2, (_done("online"), _done("online")), always_active=True
                ),
                # CPU and GPU tasks in every active state, and tasks to reset and to fail
                "mixed": _dataset(
                    call,
                    "mixed",
                    2,
                    (
                        (("cpu", 0, "idle"), ("gpu", 1, "waiting"), ("gpu2", 2, "queued")),
                        (("cpu", 0, "processing"), ("gpu", 1, "processing"), ("gpu2", 2, "idle")),
                    ),
                ),
            }
            for key in ("truncated", "truncated_running"):
                call("POST", f"/datasets/{ids[key]}/dataset_actions/truncate")
            numbers = {
                key: str(call("GET", f"/datasets/{dataset_id}")["dataset"])
                for key, dataset_id in ids.items()
            }
            yield Seeded(issuer, api, call, ids, numbers)
        assert api.returncode == 0, api.log_tail()


def exporter_once(seeded: Seeded) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One poll of the real exporter CLI (IceProd's environment names): every sample."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "API_URL": seeded.api.url,
        "OAUTH_URL": seeded.issuer.url,
        "OAUTH_CLIENT_ID": CLIENT,
        "OAUTH_CLIENT_SECRET": SECRET,
        "ICEPROD_EXPORTER_TIMEOUT": "10",
    }
    done = run_once(env)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(done.stdout)
        for s in family.samples
    }


def test_dataset_completion_completes_a_truncated_dataset_on_its_materialized_jobs(
    seeded: Seeded,
) -> None:
    before = exporter_once(seeded)
    truncated, always = seeded.numbers["truncated"], seeded.numbers["always"]
    assert before[("iceprod_dataset_truncated", (("dataset", truncated),))] == 1
    assert before[("iceprod_dataset_always_active", (("dataset", always),))] == 1
    assert before[("iceprod_dataset_always_active", (("dataset", truncated),))] == 0
    # what jobs_submitted promised is not what the truncated dataset will ever have
    assert before[("iceprod_dataset_jobs_submitted", (("dataset", truncated),))] == 5
    materialized = sum(
        v
        for (name, lbl), v in before.items()
        if name == "iceprod_dataset_jobs" and dict(lbl)["dataset"] == truncated
    )
    assert materialized == 2

    log = seeded.api.run_cron("dataset_completion", CLIENT, SECRET)

    status = {
        key: seeded.call("GET", f"/datasets/{dataset_id}")["status"]
        for key, dataset_id in seeded.ids.items()
    }
    assert status == {
        "truncated": "complete",  # on the 2 jobs it has, not the 5 submitted
        "truncated_running": "processing",  # its one job is not complete yet
        "unfinished": "processing",  # a job is still to materialize
        "always": "processing",  # skipped: always-active datasets never complete
        "mixed": "processing",
    }, log[-2000:]
    assert "always active, skipping" in log
    after = exporter_once(seeded)  # a new exporter: it counts a complete dataset, no more
    assert after[("iceprod_datasets", (("status", "complete"),))] == 1
    assert ("iceprod_dataset_truncated", (("dataset", truncated),)) not in after


def test_active_tasks_by_resource_are_iceprods_gpu_split(seeded: Seeded) -> None:
    samples = exporter_once(seeded)
    got = {
        (dict(lbl)["resource"], dict(lbl)["status"]): v
        for (name, lbl), v in samples.items()
        if name == "iceprod_active_tasks"
    }
    # the exporter's numbers are IceProd's own ?gpu= aggregation ...
    for resource in ("cpu", "gpu"):
        gpu = "true" if resource == "gpu" else "false"
        answer = seeded.call("GET", f"/task_counts/status?gpu={gpu}")
        for status in ("idle", "waiting", "queued", "processing"):
            assert got[(resource, status)] == answer.get(status, 0), (resource, status)
    # ... and that aggregation splits on requirements.gpu >= 1 (the seeded tasks of "mixed",
    # and the one running task of "truncated_running")
    assert got[("gpu", "waiting")] == 1 and got[("gpu", "queued")] == 1
    assert got[("gpu", "processing")] == 1 and got[("gpu", "idle")] == 1
    assert got[("cpu", "idle")] == 1 and got[("cpu", "processing")] == 2


def test_a_reset_goes_back_to_waiting_and_only_a_failure_is_failed(seeded: Seeded) -> None:
    dataset_id, number = seeded.ids["mixed"], seeded.numbers["mixed"]
    tasks = seeded.call("GET", f"/datasets/{dataset_id}/tasks?status=processing")
    by_name = {task["name"]: task for task in tasks.values()}
    reset, failed = by_name["gpu"], by_name["cpu"]
    used = {"instance_id": reset["instance_id"], "time_used": 1800}
    seeded.call(
        "POST",
        f"/tasks/{reset['task_id']}/task_actions/reset",
        {**used, "resources": {"memory": 3.0}, "reason": "held: memory exceeded"},
    )
    seeded.call(
        "POST",
        f"/tasks/{failed['task_id']}/task_actions/failed",
        {"instance_id": failed["instance_id"], "time_used": 60, "reason": "segfault"},
    )
    after_reset = seeded.call("GET", f"/datasets/{dataset_id}/tasks/{reset['task_id']}")
    assert after_reset["status"] == "waiting"
    assert after_reset["failures"] == reset["failures"] + 1
    assert after_reset["requirements"]["memory"] == 4.5, "raised to 1.5x what it used"
    assert after_reset["walltime_err"] == 0.5
    after_failure = seeded.call("GET", f"/datasets/{dataset_id}/tasks/{failed['task_id']}")
    assert after_failure["status"] == "failed" and after_failure["failures"] == 1

    samples = exporter_once(seeded)

    def tasks_of(name: str, status: str) -> float:
        labels = (("dataset", number), ("status", status), ("task_name", name))
        return samples[("iceprod_dataset_tasks", labels)]

    assert tasks_of("gpu", "waiting") == 2 and tasks_of("gpu", "failed") == 0
    assert tasks_of("cpu", "failed") == 1 and tasks_of("cpu", "processing") == 0


def test_a_truncated_dataset_is_still_materialized_when_asked_for_by_id(seeded: Seeded) -> None:
    """Last in the module: it adds a job (and an idle task) to the IceProd-wide counts."""
    dataset_id = seeded.ids["truncated_running"]
    assert seeded.call("GET", f"/datasets/{dataset_id}")["truncated"] is True
    before = sum(seeded.call("GET", f"/datasets/{dataset_id}/job_counts/status").values())
    argv = ["-m", "iceprod.services.actions.materialization.materialize", dataset_id, "-n", "1"]
    log = seeded.api.run_iceprod(argv, CLIENT, SECRET, 120, "materialize", stderr=True)
    after = seeded.call("GET", f"/datasets/{dataset_id}/job_counts/status")
    assert before == 1 and sum(after.values()) == 2, log[-2000:]
    samples = exporter_once(seeded)
    number = seeded.numbers["truncated_running"]
    jobs = sum(
        v
        for (name, lbl), v in samples.items()
        if name == "iceprod_dataset_jobs" and dict(lbl)["dataset"] == number
    )
    assert jobs == 2 and samples[("iceprod_dataset_truncated", (("dataset", number),))] == 1
