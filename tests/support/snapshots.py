"""Representative snapshots for golden exposition tests."""

from __future__ import annotations

from iceprod_exporter.model.snapshot import Dataset, Snapshot, TaskStats, frozen_map

NOW = 1_800_000_000.0


def counts(**kv: int) -> dict[str, int]:
    return dict(kv)


PROCESSING = Dataset(
    dataset_id="a1b2c3",
    number=22001,
    status="processing",
    description='Level2 "pass2" \\ test',
    group="simprod",
    username="alice",
    priority=0.5,
    start_timestamp=NOW - 86400,
    jobs_submitted=10,
    tasks_submitted=20,
    jobs=frozen_map(counts(processing=6, complete=2)),
    counted_at=NOW - 30,
    tasks=frozen_map(
        {
            "generate": frozen_map(counts(complete=7, processing=1)),
            "filter": frozen_map(counts(idle=3, waiting=2, queued=1, failed=1, complete=1)),
        }
    ),
    task_stats=frozen_map(
        {
            "generate": TaskStats(7, 0.0, 7.0, 0.5, 1.0, 0.25, 0.5, 1.5, 0.9333333333333333),
            "filter": TaskStats(1, 1.0, 2.0, 0.0, 2.0, None, 2.0, 2.0, 1.0),
        }
    ),
)

LEGACY = Dataset(
    # an IceProd 2 server: dataset status "truncated", task status "reset"
    dataset_id="d4e5f6",
    number=20999,
    status="truncated",
    group="users",
    username="bob",
    jobs_submitted=1,
    tasks_submitted=1,
    truncated=True,
    jobs=frozen_map(counts(processing=1)),
    tasks=frozen_map({"main": frozen_map(counts(reset=1))}),
    counted_at=NOW - 240,  # quiet: read every quiet_poll_interval
)

FORBIDDEN = Dataset(
    dataset_id="f0f0f0",
    number=23000,
    status="suspended",
    group="filtering",
    username="carol",
)

ALWAYS_ACTIVE = Dataset(
    # never completed by IceProd; its one task name completed without reporting walltime
    dataset_id="aaaaaa",
    number=22100,
    status="processing",
    group="filtering",
    username="erin",
    jobs_submitted=4,
    tasks_submitted=4,
    always_active=True,
    jobs=frozen_map(counts(processing=1, complete=3)),
    tasks=frozen_map({"pass2": frozen_map(counts(waiting=1, complete=3))}),
    task_stats=frozen_map(
        {"pass2": TaskStats(3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, None)},
    ),
    counted_at=NOW - 30,
)

FINISHED = Dataset(
    dataset_id="0c0c0c",
    number=21000,
    status="complete",
    group="simprod",
    username="dave",
    jobs_submitted=1,
    tasks_submitted=1,
    jobs=frozen_map(counts(complete=1)),
    tasks=frozen_map({"generate": frozen_map(counts(complete=1))}),
    watched=False,
)

FLEET = Snapshot(
    up=True,
    polled_at=NOW,
    last_success=NOW,
    datasets=frozen_map(
        {d.dataset_id: d for d in (PROCESSING, LEGACY, FORBIDDEN, ALWAYS_ACTIVE, FINISHED)}
    ),
    dataset_counts=frozen_map(counts(processing=2, suspended=1, complete=5, truncated=1)),
    active_tasks=frozen_map(
        {
            "cpu": frozen_map(counts(idle=3, waiting=3, queued=1, processing=1)),
            "gpu": frozen_map(counts(idle=1)),
        }
    ),
    cycle=3,
)
