"""Poll cycles against a fake source: cadence, grace period, failures, sharding."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from iceprod_exporter import api
from iceprod_exporter.api import ApiError
from iceprod_exporter.poller import Poller, Schedule, shard_of
from iceprod_exporter.telemetry import Telemetry


class FakeSource:
    """Answers routes from a dict; an ApiError value is raised instead of returned."""

    def __init__(self) -> None:
        self.datasets: dict[str, dict[str, Any]] = {}
        self.answers: dict[str, Any] = {}
        self.calls: Counter[str] = Counter()
        self.down = False
        self.sent = 0
        self.answers["/grids"] = {
            "g1": {
                "grid_id": "g1",
                "host": "submit.example",
                "version": "3.2.43",
                "last_update": "2026-11-26T10:00:00.000000",
            }
        }

    def add(self, dataset_id: str, number: int, status: str = "processing", **extra: Any) -> None:
        self.datasets[dataset_id] = {
            "dataset_id": dataset_id,
            "dataset": number,
            "status": status,
            "jobs_submitted": 2,
            **extra,
        }
        self.answers[f"/datasets/{dataset_id}/job_counts/status"] = {"processing": 2}
        self.answers[f"/datasets/{dataset_id}/task_counts/name_status"] = {
            "generate": {"waiting": 1, "complete": 1}
        }
        self.answers[f"/datasets/{dataset_id}/task_stats"] = {
            "generate": {
                "count": 1,
                "gpu": 0,
                "total_hrs": 1.0,
                "total_err_hrs": 0.0,
                "avg_hrs": 1.0,
                "stddev_hrs": None,
                "min_hrs": 1.0,
                "max_hrs": 1.0,
                "efficiency": 1.0,
            }
        }

    async def get(self, template: str, args: dict[str, str] | None = None, **path: str) -> Any:
        route = template.format(**path)
        self.calls[template] += 1
        self.sent += 1
        if self.down:
            raise ApiError(template, "connection", "refused")
        if template == api.DATASETS:
            assert args and "dataset|status" in args["keys"]
            return self.datasets
        answer = self.answers[route]
        if isinstance(answer, ApiError):
            raise answer
        return answer

    def bad_response(self, template: str, detail: str) -> ApiError:
        return ApiError(template, "bad_response", detail)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def make(source: FakeSource, clock: Clock, **schedule: Any) -> Poller:
    options = {
        "poll_interval": 60.0,
        "slow_poll_factor": 5,
        "task_stats_interval": 600.0,
        "grace_period": 300.0,
        **schedule,
    }
    return Poller(source, Schedule(**options), Telemetry(CollectorRegistry()), clock)


def poll(poller: Poller, full: bool = False) -> Any:
    return asyncio.run(poller.poll(full=full))


def test_first_poll_reads_everything_and_fills_the_snapshot() -> None:
    source, clock = FakeSource(), Clock()
    source.add("a", 1)
    source.add("b", 2, status="suspended")
    source.add("c", 3, status="complete")
    snap = poll(make(source, clock))
    assert snap.up and snap.last_success == clock.now
    assert set(snap.datasets) == {"a", "b"}, "complete datasets are only counted"
    assert dict(snap.dataset_counts) == {"processing": 1, "suspended": 1, "complete": 1}
    assert snap.datasets["a"].jobs == {"processing": 2}
    assert snap.datasets["a"].tasks == {"generate": {"waiting": 1, "complete": 1}}
    assert snap.datasets["a"].task_stats["generate"].avg_hrs == 1.0
    assert source.calls[api.TASK_COUNTS_NAME] == 2
    assert source.calls[api.DATASETS] == 1
    assert snap.grids["g1"].host == "submit.example"
    assert snap.grids["g1"].last_update == 1795687200.0


def test_slow_cadence_for_suspended_and_slower_task_stats() -> None:
    source, clock = FakeSource(), Clock()
    source.add("a", 1)
    source.add("b", 2, status="errors")
    poller = make(source, clock)
    poll(poller)
    for _ in range(3):
        clock.now += 60
        poll(poller)
    assert source.calls[api.JOB_COUNTS] == 2 + 3, "errors dataset skipped for 3 cycles"
    assert source.calls[api.TASK_STATS] == 2, "task_stats only on the first cycle"
    clock.now += 60 * 2
    poll(poller)
    assert source.calls[api.JOB_COUNTS] == 5 + 2, "slow cadence reached after 5 intervals"
    clock.now += 600
    poll(poller)
    assert source.calls[api.TASK_STATS] == 4


def test_completed_dataset_keeps_final_state_for_the_grace_period() -> None:
    source, clock = FakeSource(), Clock()
    source.add("a", 1)
    poller = make(source, clock)
    poll(poller)
    source.datasets["a"]["status"] = "complete"
    source.answers["/datasets/a/job_counts/status"] = {"complete": 2}
    clock.now += 60
    snap = poll(poller)
    final = snap.datasets["a"]
    assert final.status == "complete" and final.jobs == {"complete": 2}, "final state read once"
    assert final.retired_at == clock.now and snap.watched() == []
    calls = source.calls[api.JOB_COUNTS]
    clock.now += 240
    snap = poll(poller)
    assert "a" in snap.datasets and source.calls[api.JOB_COUNTS] == calls, "not polled again"
    clock.now += 120
    assert "a" not in poll(poller).datasets, "dropped after the grace period"


def test_vanished_dataset_ages_out() -> None:
    source, clock = FakeSource(), Clock()
    source.add("a", 1)
    poller = make(source, clock)
    poll(poller)
    del source.datasets["a"]
    clock.now += 60
    assert poll(poller).datasets["a"].retired_at == clock.now
    clock.now += 301
    assert "a" not in poll(poller).datasets


def test_outage_keeps_last_values_and_marks_down() -> None:
    source, clock = FakeSource(), Clock()
    source.add("a", 1)
    poller = make(source, clock)
    good = poll(poller)
    source.down = True
    clock.now += 60
    bad = poll(poller)
    assert not bad.up and bad.last_success == good.last_success
    assert bad.datasets == good.datasets
    assert bad.visible(clock.now, 600).datasets, "served while within max_staleness"
    assert not bad.visible(clock.now + 600, 600).datasets, "dropped past max_staleness"
    source.down = False
    clock.now += 60
    assert poll(poller).up


def test_forbidden_dataset_is_a_permission_problem_not_an_outage() -> None:
    source, clock = FakeSource(), Clock()
    source.add("a", 1)
    source.add("b", 2)
    source.answers["/datasets/b/job_counts/status"] = ApiError(
        api.JOB_COUNTS, "forbidden", "403", 403
    )
    snap = poll(make(source, clock))
    assert snap.up
    assert snap.datasets["b"].forbidden and snap.datasets["b"].jobs is None
    assert not snap.datasets["a"].forbidden


@pytest.mark.parametrize("reason", ["overloaded", "timeout", "bad_response", "server_error"])
def test_dataset_failure_marks_down_but_keeps_old_counts(reason: str) -> None:
    source, clock = FakeSource(), Clock()
    source.add("a", 1)
    poller = make(source, clock)
    poll(poller)
    source.answers["/datasets/a/task_counts/name_status"] = ApiError(
        api.TASK_COUNTS_NAME, reason, "x"
    )
    clock.now += 60
    snap = poll(poller)
    assert not snap.up
    assert snap.datasets["a"].tasks == {"generate": {"waiting": 1, "complete": 1}}


def test_malformed_bodies_do_not_crash() -> None:
    source, clock = FakeSource(), Clock()
    source.add("a", 1)
    source.add("b", 2)
    source.datasets["junk"] = {"dataset": "not a number", "status": 5}
    source.answers["/datasets/b/job_counts/status"] = {"processing": "many"}
    snap = poll(make(source, clock))
    assert "junk" not in snap.datasets
    assert snap.datasets["a"].jobs is not None and snap.datasets["b"].jobs is None
    assert not snap.up, "a body of the wrong shape is a failed poll"
    source.datasets = ["not", "a", "mapping"]  # type: ignore[assignment]
    assert not poll(make(source, clock)).up


def test_shards_partition_datasets_and_only_shard_0_counts_fleet() -> None:
    source, clock = FakeSource(), Clock()
    for i in range(40):
        source.add(f"ds{i:02d}", 100 + i)
    whole = poll(make(source, clock))
    parts = [poll(make(source, clock, shard=k, total_shards=3)) for k in range(3)]
    ids = [set(p.datasets) for p in parts]
    assert set.union(*ids) == set(whole.datasets)
    assert sum(len(i) for i in ids) == len(whole.datasets), "no dataset on two shards"
    assert all(ids), "every shard gets work"
    assert parts[0].dataset_counts == whole.dataset_counts
    assert parts[1].dataset_counts is None and parts[2].dataset_counts is None
    assert shard_of("ds01", 3) == shard_of("ds01", 3)


def test_one_summary_event_per_poll() -> None:
    from structlog.testing import capture_logs

    source, clock = FakeSource(), Clock()
    source.add("a", 1)
    with capture_logs() as logs:
        poll(make(source, clock))
    (summary,) = [e for e in logs if e["event"] == "poll.finished"]
    assert summary["requests"] == source.sent == 5
    assert summary["up"] is True and summary["fetched"] == 1 and summary["failures"] == {}


def test_global_route_forbidden_to_a_user_token_is_reported_once() -> None:
    from structlog.testing import capture_logs

    source, clock = FakeSource(), Clock()
    source.add("a", 1)
    source.answers["/grids"] = ApiError(api.GRIDS, "forbidden", "403", 403)
    registry = CollectorRegistry()
    poller = Poller(source, Schedule(poll_interval=60.0), Telemetry(registry), clock)
    with capture_logs() as logs:
        first = poll(poller)
        clock.now += 60
        poll(poller)
    assert first.up and first.grids is None, "a permission problem, not an outage"
    denied = [e for e in logs if e["event"] == "permission.denied"]
    assert len(denied) == 1 and denied[0]["endpoint"] == "/grids"
    value = registry.get_sample_value("iceprod_exporter_permission_denied", {"endpoint": "/grids"})
    assert value == 1
    source.answers["/grids"] = {}
    poll(poller)
    assert (
        registry.get_sample_value("iceprod_exporter_permission_denied", {"endpoint": "/grids"}) == 0
    )
