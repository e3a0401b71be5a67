"""Poll cycles against a fake source: cadence, grace period, failures, sharding."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry

from iceprod_exporter.exposition.telemetry import Telemetry
from iceprod_exporter.poll.poller import Poller
from iceprod_exporter.poll.schedule import Schedule, shard_of
from iceprod_exporter.source import client as api
from iceprod_exporter.source.client import ApiError
from iceprod_exporter.source.labels import Endpoint, Reason
from tests.support.clock import FakeClock
from tests.support.collector_oracle import SnapshotCollector
from tests.support.poller import make, poll
from tests.support.source import FakeSource


def test_first_poll_reads_everything_and_fills_the_snapshot() -> None:
    source, clock = FakeSource(), FakeClock()
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
    assert snap.active_tasks == {"cpu": {"idle": 5, "waiting": 2}, "gpu": {"queued": 1}}
    assert source.calls[Endpoint.ACTIVE_TASKS] == 2, "one indexed aggregation per resource"


def _read_times(
    poller: Poller, source: FakeSource, clock: FakeClock, dataset: str, cycles: int
) -> list[float]:
    """Poll ``cycles`` times, a minute apart: the times ``dataset``'s counts were read."""
    times = []
    for _ in range(cycles):
        clock.now += 60
        poll(poller)
        counted = poller.snapshot.datasets[dataset].counted_at
        if counted == clock.now:
            times.append(counted)
    return times


def test_slow_cadence_for_suspended_and_slower_task_stats() -> None:
    source, clock = FakeSource(), FakeClock()
    source.add("a", 1)
    source.add("b", 2, status="errors")
    poller = make(source, clock)
    poll(poller)
    first = clock.now
    reads = _read_times(poller, source, clock, "b", 20)
    gaps = [later - earlier for earlier, later in zip([first, *reads], reads, strict=False)]
    assert len(reads) == 4 and all(gap <= 300 for gap in gaps), f"once per 300 s: {reads}"
    assert gaps[1:] == [300, 300, 300], "at the dataset's own phase in each interval"
    assert source.calls[api.JOB_COUNTS] == 2 + 20 + 4, "a every cycle, b once per slow interval"
    assert source.calls[api.TASK_STATS] == 2, "no task completed: task_stats cannot have changed"
    source.answers["/datasets/a/task_counts/name_status"] = {"generate": {"complete": 2}}
    clock.now += 60
    poll(poller)  # the counts show a completed task ...
    assert source.calls[api.TASK_STATS] == 2
    clock.now += 60
    poll(poller)  # ... so task_stats is read again, on the next cycle
    assert source.calls[api.TASK_STATS] == 3
    clock.now += 600
    poll(poller)
    assert source.calls[api.TASK_STATS] == 3, "nothing completed since"


def test_slow_reads_are_spread_over_the_cycles() -> None:
    """Datasets that turn slow together are read at their own phases, not all in one cycle."""
    source, clock = FakeSource(), FakeClock()
    for n in range(200):
        source.add(f"d{n}", n, status="suspended")
    poller = make(source, clock)
    poll(poller)
    per_cycle = []
    for _ in range(10):  # two slow intervals
        before = source.calls[api.JOB_COUNTS]
        clock.now += 60
        poll(poller)
        per_cycle.append(source.calls[api.JOB_COUNTS] - before)
    assert sum(per_cycle) == 400, "each read once per interval"
    assert max(per_cycle) <= 70, f"about 40 a cycle, not 200 in one: {per_cycle}"


def test_a_quiet_dataset_is_read_within_the_bound_and_busy_again_on_a_change() -> None:
    source, clock = FakeSource(), FakeClock()
    source.add("a", 1)
    poller = make(source, clock, quiet_after_polls=3, quiet_poll_interval=300.0)
    poll(poller)
    busy = _read_times(poller, source, clock, "a", 3)
    assert len(busy) == 3, "read every cycle until 3 reads in a row found nothing new"
    quiet = _read_times(poller, source, clock, "a", 12)
    gaps = [later - earlier for earlier, later in zip([busy[-1], *quiet], quiet, strict=False)]
    assert len(quiet) in (2, 3) and all(gap <= 300 for gap in gaps), f"quiet: {quiet}"
    source.answers["/datasets/a/job_counts/status"] = {"processing": 1, "complete": 1}
    changed = clock.now
    while poller.snapshot.datasets["a"].jobs != {"processing": 1, "complete": 1}:
        clock.now += 60
        poll(poller)
    assert clock.now - changed <= 300, "the change is seen within quiet_poll_interval"
    assert len(_read_times(poller, source, clock, "a", 3)) == 3, "and read every cycle again"


def test_a_status_change_of_a_quiet_dataset_is_read_at_once() -> None:
    source, clock = FakeSource(), FakeClock()
    source.add("a", 1)
    poller = make(source, clock, quiet_after_polls=1, quiet_poll_interval=3600.0)
    for _ in range(3):
        poll(poller)
        clock.now += 60
    calls = source.calls[api.JOB_COUNTS]
    assert calls == 2, "quiet after one unchanged read"
    source.datasets["a"]["jobs_submitted"] = 5
    poll(poller)
    assert source.calls[api.JOB_COUNTS] == calls + 1, "discovery changed: read now"
    assert poller.snapshot.datasets["a"].jobs_submitted == 5


def test_completed_dataset_keeps_final_state_for_the_grace_period() -> None:
    source, clock = FakeSource(), FakeClock()
    source.add("a", 1)
    poller = make(source, clock)
    poll(poller)
    source.datasets["a"]["status"] = "complete"
    source.answers["/datasets/a/job_counts/status"] = {"complete": 2}
    clock.now += 60
    snap = poll(poller)
    final = snap.datasets["a"]
    assert final.status == "complete" and final.jobs == {"complete": 2}, "final state read once"
    assert not final.watched and snap.watched() == []
    assert poller.tracking["a"].retired_at == clock.now
    calls = source.calls[api.JOB_COUNTS]
    clock.now += 240
    snap = poll(poller)
    assert "a" in snap.datasets and source.calls[api.JOB_COUNTS] == calls, "not polled again"
    clock.now += 120
    assert "a" not in poll(poller).datasets, "dropped after the grace period"


def test_vanished_dataset_ages_out() -> None:
    source, clock = FakeSource(), FakeClock()
    source.add("a", 1)
    poller = make(source, clock)
    poll(poller)
    del source.datasets["a"]
    clock.now += 60
    assert not poll(poller).datasets["a"].watched
    assert poller.tracking["a"].retired_at == clock.now
    clock.now += 301
    assert "a" not in poll(poller).datasets


def test_outage_keeps_last_values_and_marks_down() -> None:
    source, clock = FakeSource(), FakeClock()
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
    source, clock = FakeSource(), FakeClock()
    source.add("a", 1)
    source.add("b", 2)
    source.answers["/datasets/b/job_counts/status"] = ApiError(
        api.JOB_COUNTS, Reason.FORBIDDEN, "403", 403
    )
    poller = make(source, clock)
    snap = poll(poller)
    assert snap.up
    assert poller.tracking["b"].forbidden and snap.datasets["b"].jobs is None
    assert not poller.tracking["a"].forbidden


@pytest.mark.parametrize(
    "reason", [Reason.OVERLOADED, Reason.TIMEOUT, Reason.BAD_RESPONSE, Reason.SERVER_ERROR]
)
def test_dataset_failure_marks_down_but_keeps_old_counts(reason: Reason) -> None:
    source, clock = FakeSource(), FakeClock()
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
    source, clock = FakeSource(), FakeClock()
    source.add("a", 1)
    source.add("b", 2)
    source.datasets["junk"] = {"dataset": "not a number", "status": 5}
    source.answers["/datasets/b/job_counts/status"] = {"processing": "many"}
    registry = CollectorRegistry()
    poller = Poller(source, Schedule(poll_interval=60.0), Telemetry(registry), clock)
    snap = poll(poller)
    assert "junk" not in snap.datasets
    assert snap.datasets["a"].jobs is not None and snap.datasets["b"].jobs is None
    assert snap.up, "a value that does not fit drops that value, not the poll"
    for field in ("dataset", "job_counts"):
        labels = {"field": field}
        assert registry.get_sample_value("iceprod_exporter_bad_values_total", labels) == 1
    source.answers["/datasets/b/job_counts/status"] = ["not", "an", "object"]
    assert not poll(make(source, clock)).up, "a body of the wrong shape is a failed poll"
    source.datasets = ["not", "a", "mapping"]  # type: ignore[assignment]
    assert not poll(make(source, clock)).up


def test_shards_partition_datasets_and_only_shard_0_counts_fleet() -> None:
    source, clock = FakeSource(), FakeClock()
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

    source, clock = FakeSource(), FakeClock()
    source.add("a", 1)
    with capture_logs() as logs:
        poll(make(source, clock))
    (summary,) = [e for e in logs if e["event"] == "poll.finished"]
    assert summary["requests"] == source.sent == 6  # discovery, 3 for the dataset, 2 global
    assert summary["up"] is True and summary["fetched"] == 1 and summary["failures"] == {}


def test_global_route_forbidden_to_a_user_token_is_reported_once() -> None:
    from structlog.testing import capture_logs

    source, clock = FakeSource(), FakeClock()
    source.add("a", 1)
    denial = ApiError(Endpoint.ACTIVE_TASKS, Reason.FORBIDDEN, "403", 403)
    source.answers["/task_counts/status?gpu=false"] = denial
    registry = CollectorRegistry()
    poller = Poller(source, Schedule(poll_interval=60.0), Telemetry(registry), clock)
    with capture_logs() as logs:
        first = poll(poller)
        clock.now += 60
        poll(poller)
    assert first.up and first.active_tasks is None, "a permission problem, not an outage"
    denied = [e for e in logs if e["event"] == "permission.denied"]
    assert len(denied) == 1 and denied[0]["endpoint"] == "/task_counts/status"
    route = {"endpoint": "/task_counts/status"}
    assert registry.get_sample_value("iceprod_exporter_permission_denied", route) == 1
    source.answers["/task_counts/status?gpu=false"] = {}
    assert poll(poller).active_tasks == {"cpu": {}, "gpu": {"queued": 1}}
    assert registry.get_sample_value("iceprod_exporter_permission_denied", route) == 0


def test_an_unexpected_error_is_a_failed_poll_and_the_next_goes_on() -> None:
    from structlog.testing import capture_logs

    source, clock = FakeSource(), FakeClock()
    source.add("a", 1)
    registry = CollectorRegistry()
    poller = Poller(source, Schedule(poll_interval=60.0), Telemetry(registry), clock)
    good = poll(poller)
    source.answers["/datasets/a/job_counts/status"] = RuntimeError("a bug")
    clock.now += 60
    with capture_logs() as logs:
        bad = poll(poller)
    assert not bad.up and bad.last_success == good.last_success
    assert bad.datasets == good.datasets, "the last values stay"
    assert poller.consecutive_crashes == 1
    assert registry.get_sample_value("iceprod_exporter_poll_crashes_total") == 1
    assert registry.get_sample_value("iceprod_exporter_poll_failures_total") == 1
    assert [e["event"] for e in logs].count("poll.crashed") == 1
    source.answers["/datasets/a/job_counts/status"] = {"processing": 1}
    clock.now += 60
    assert poll(poller).up and poller.consecutive_crashes == 0


def test_recovery_from_403_restores_counts_and_task_stats_at_once() -> None:
    source, clock = FakeSource(), FakeClock()
    source.add("a", 1)
    poller = make(source, clock)
    poll(poller)
    saved = dict(source.answers)
    for route in ("job_counts/status", "task_counts/name_status", "task_stats"):
        source.answers[f"/datasets/a/{route}"] = ApiError(route, Reason.FORBIDDEN, "403", 403)
    clock.now += 60
    lost = poll(poller).datasets["a"]
    assert lost.jobs is None and lost.task_stats is None
    source.answers.update(saved)
    clock.now += 60
    back = poll(poller).datasets["a"]
    assert back.jobs == {"processing": 2}
    assert back.task_stats is not None and back.task_stats["generate"].avg_hrs == 1.0


def test_recovery_from_a_failed_task_stats_read_retries_it_next_cycle() -> None:
    source, clock = FakeSource(), FakeClock()
    source.add("a", 1)
    saved = source.answers["/datasets/a/task_stats"]
    source.answers["/datasets/a/task_stats"] = ApiError(api.TASK_STATS, Reason.SERVER_ERROR, "5xx")
    poller = make(source, clock)
    first = poll(poller)
    assert not first.up and first.datasets["a"].jobs is not None
    source.answers["/datasets/a/task_stats"] = saved
    clock.now += 60
    assert poll(poller).datasets["a"].task_stats is not None


def test_duplicate_dataset_numbers_keep_one_dataset_and_count_the_conflict() -> None:
    source, clock = FakeSource(), FakeClock()
    source.add("b-second", 7)
    source.add("a-first", 7)
    registry = CollectorRegistry()
    poller = Poller(source, Schedule(poll_interval=60.0), Telemetry(registry), clock)
    snap = poll(poller)
    assert set(snap.datasets) == {"a-first"}, "the dataset id that sorts first wins"
    labels = {"field": "dataset_conflict"}
    assert registry.get_sample_value("iceprod_exporter_bad_values_total", labels) == 1


def test_unfit_values_drop_only_their_field() -> None:
    source, clock = FakeSource(), FakeClock()
    source.add("a", 1, description="\ud800", priority=10**400, jobs_submitted=10**30)
    source.add("b", 2, priority=float("nan"))
    source.answers["/datasets/b/task_counts/name_status"] = {
        "ok": {"queued": 1},
        "\udfff": {"queued": 1},
        "huge": {"queued": 2**64},
    }
    registry = CollectorRegistry()
    poller = Poller(source, Schedule(poll_interval=60.0), Telemetry(registry), clock)
    snap = poll(poller)
    a, b = snap.datasets["a"], snap.datasets["b"]
    assert snap.up
    assert a.description == "" and a.priority is None and a.jobs_submitted is None
    assert a.jobs == {"processing": 2}, "the rest of the dataset is kept"
    assert b.priority is None and b.tasks == {"ok": {"queued": 1}}
    for field, n in [
        ("description", 1),
        ("priority", 2),
        ("jobs_submitted", 1),
        ("task_counts", 2),
    ]:
        value = registry.get_sample_value("iceprod_exporter_bad_values_total", {"field": field})
        assert value == n, field


def test_names_repeated_across_datasets_are_kept_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from iceprod_exporter.poll import parse

    monkeypatch.setattr(parse, "_shared_names", dict(parse._shared_names))  # this test's own
    body = '{"generate": {"queued": 1, "a-status-of-a-later-iceprod": 2}}'
    first, second = json.loads(body), json.loads(body)  # two decodes: distinct string objects
    rejects = parse.Rejects()
    ((name_a, counts_a),) = parse.name_counts(first, "a", rejects).items()
    ((name_b, counts_b),) = parse.name_counts(second, "b", rejects).items()
    assert name_a is name_b, "one task name object for both datasets"
    assert all(x is y for x, y in zip(counts_a, counts_b, strict=True)), "one per status"
    assert counts_a._keys is counts_b._keys, "maps with the same keys share one key tuple"  # type: ignore[attr-defined]
    assert parse.counts(json.loads('{"junk": 1, "queued": -1}'), "c", rejects) is None
    assert "junk" not in parse._shared_names, "a rejected body leaves no names behind"
    monkeypatch.setattr(parse, "SHARED_NAMES_LIMIT", len(parse._shared_names))
    unseen = "".join(["never", "-seen"])
    assert parse.shared(unseen) is unseen
    assert "generate" not in parse._shared_names, "a full table starts over"
    assert unseen in parse._shared_names and "queued" in parse._shared_names


def test_every_bounded_label_combination_starts_at_zero() -> None:
    from iceprod_exporter.source.labels import API_REASONS, TOKEN_REASONS, Endpoint, ValueField

    registry = CollectorRegistry()
    Telemetry(registry)
    value = registry.get_sample_value
    for endpoint in Endpoint:
        assert value("iceprod_exporter_api_requests_total", {"endpoint": endpoint}) == 0
        assert value("iceprod_exporter_permission_denied", {"endpoint": endpoint}) == 0
        for reason in API_REASONS:
            labels: dict[str, str] = {"endpoint": endpoint, "reason": reason}
            assert value("iceprod_exporter_api_request_failures_total", labels) == 0
    for reason in TOKEN_REASONS:
        assert value("iceprod_exporter_token_refresh_failures_total", {"reason": reason}) == 0
    for field in ValueField:
        assert value("iceprod_exporter_bad_values_total", {"field": field}) == 0


def test_the_oldest_count_shows_how_far_behind_the_cadence_is() -> None:
    source, clock = FakeSource(), FakeClock()
    source.add("a", 1)
    source.add("b", 2, status="suspended")
    registry = CollectorRegistry()
    schedule = Schedule(poll_interval=60.0, slow_poll_factor=1000)  # b: once in ~17 hours
    poller = Poller(source, schedule, Telemetry(registry), clock)
    poll(poller)
    oldest = "iceprod_exporter_oldest_count_timestamp_seconds"
    assert registry.get_sample_value(oldest) == 1_000.0
    clock.now += 60
    poll(poller)
    assert poller.snapshot.datasets["a"].counted_at == clock.now
    assert registry.get_sample_value(oldest) == 1_000.0, "b, counted a minute ago"
    source.datasets["b"]["status"] = "complete"
    clock.now += 60
    poll(poller)
    assert registry.get_sample_value(oldest) == clock.now, "a complete dataset is not watched"


def test_what_did_not_change_keeps_its_objects_from_one_snapshot_to_the_next() -> None:
    """Re-read values equal to those held, and datasets not read, stay the same objects.

    Rebuilding every dataset each cycle frees the previous snapshot's objects between the new
    ones: at 10,000 datasets the holes kept the allocator's pages resident (docs/design.md).
    """
    source, clock = FakeSource(), FakeClock()
    source.add("a", 1)
    source.add("b", 2)
    for n in range(3, 8):  # read every fifth cycle (slow_poll_factor), spread over them
        source.add(f"s{n}", n, status="suspended")
    poller = make(source, clock)
    first = poll(poller, full=True)
    clock.now += 60
    second = poll(poller)
    a1, a2 = first.datasets["a"], second.datasets["a"]
    assert a2.counted_at == clock.now, "read again"
    assert (a2.jobs, a2.tasks) == (a1.jobs, a1.tasks)
    assert a2.jobs is a1.jobs and a2.tasks is a1.tasks
    unread = [k for k, d in second.datasets.items() if d.counted_at == first.datasets[k].counted_at]
    assert unread, "some suspended datasets are not due in the second cycle"
    assert all(second.datasets[k] is first.datasets[k] for k in unread), "not read: not rebuilt"
    clock.now += 60
    third = poll(poller, full=True)
    assert third.datasets["a"].task_stats is a1.task_stats
    source.answers["/datasets/b/job_counts/status"] = {"processing": 1, "complete": 1}
    source.datasets["b"]["description"] = "renamed"
    clock.now += 60
    fourth = poll(poller)
    b = fourth.datasets["b"]
    assert b.jobs == {"processing": 1, "complete": 1} and b.description == "renamed"
    assert b.tasks is a1.tasks or b.tasks == a1.tasks
    assert fourth.datasets["a"].jobs is a1.jobs


def test_a_small_map_reads_and_compares_like_a_read_only_dict() -> None:
    """The snapshot's per-dataset maps (counts, task names) are SmallMaps, not dicts."""
    from iceprod_exporter.model.snapshot import SmallMap

    m = SmallMap(("queued", "complete"), (1, 2))
    assert m["complete"] == 2 and m.get("idle", 0) == 0 and "queued" in m
    assert list(m.items()) == [("queued", 1), ("complete", 2)] and len(m) == 2
    same = {"complete": 2, "queued": 1}
    assert m == same and same == m, "both ways"
    assert m != {"queued": 1} and m != SmallMap(("queued", "complete"), (1, 3))
    assert m == SmallMap(("complete", "queued"), (2, 1)), "order does not matter"
    assert not SmallMap((), ()) and repr(m) == "SmallMap({'queued': 1, 'complete': 2})"
    with pytest.raises(KeyError):
        m["idle"]
    with pytest.raises(TypeError):
        m["idle"] = 3  # type: ignore[index]
    with pytest.raises(TypeError):
        hash(m)
    with pytest.raises(ValueError, match="distinct keys"):
        SmallMap(("a", "a"), (1, 2))


def test_what_iceprod_3_means_reaches_the_snapshot() -> None:
    """IceProd 3.x's meanings, from discovery and task_stats to the exposition.

    always_active and truncated come from discovery; IceProd's efficiency 0.0 without walltime
    is unknown, not waste; a task name is GPU work when its complete tasks asked for GPUs.
    """
    source, clock = FakeSource(), FakeClock()
    source.add("a", 1, always_active=True)
    source.add("t", 2, truncated=True)
    source.answers["/datasets/a/task_stats"] = {
        "reco": {
            "count": 3,
            "gpu": 3,
            "total_hrs": 0.0,
            "total_err_hrs": 0.0,
            "avg_hrs": 0.0,
            "stddev_hrs": 0.0,
            "min_hrs": 0.0,
            "max_hrs": 0.0,
            "efficiency": 0.0,
        }
    }
    snap = poll(make(source, clock))
    always, truncated = snap.datasets["a"], snap.datasets["t"]
    assert always.always_active and not always.truncated
    assert truncated.truncated and not truncated.always_active
    assert always.task_stats["reco"].efficiency is None
    assert truncated.task_stats["generate"].efficiency == 1.0
    registry = CollectorRegistry()
    SnapshotCollector(lambda: snap, max_staleness=600, clock=clock, registry=registry)
    value = registry.get_sample_value
    assert value("iceprod_dataset_always_active", {"dataset": "1"}) == 1
    assert value("iceprod_dataset_always_active", {"dataset": "2"}) == 0
    assert (
        value("iceprod_dataset_task_efficiency_ratio", {"dataset": "1", "task_name": "reco"})
        is None
    )
    assert value("iceprod_dataset_task_gpu", {"dataset": "1", "task_name": "reco"}) == 1
    assert value("iceprod_dataset_task_gpu", {"dataset": "2", "task_name": "generate"}) == 0
    gpu_waiting = {"resource": "gpu", "status": "waiting"}
    assert value("iceprod_active_tasks", gpu_waiting) == 0, "every active status, 0 included"
    assert value("iceprod_active_tasks", {"resource": "cpu", "status": "idle"}) == 5
