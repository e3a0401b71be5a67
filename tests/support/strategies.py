"""Hypothesis strategies for IceProd answers of right and wrong shapes; a fake source of them."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from tests.support.source import FakeSource

# every code point, lone surrogates included (valid in JSON, not encodable as UTF-8)
TEXT = st.text(st.characters(blacklist_categories=()), max_size=8)

NUMBER = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=300, max_value=400).map(lambda e: 10**e),  # beyond a float
    st.floats(allow_nan=True, allow_infinity=True),
)

JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBER, TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=8,
)

STATUS = st.one_of(st.sampled_from(["processing", "suspended", "errors", "complete"]), TEXT)


def maybe(right: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the right shape, sometimes anything."""
    return st.one_of(right, right, right, JSON)


ROW = st.fixed_dictionaries(
    {
        "dataset": maybe(st.integers(min_value=0, max_value=30)),  # small: numbers collide
        "status": maybe(STATUS),
    },
    optional={
        "description": maybe(TEXT),
        "group": maybe(TEXT),
        "username": maybe(TEXT),
        "priority": maybe(NUMBER),
        "jobs_submitted": maybe(NUMBER),
        "tasks_submitted": maybe(NUMBER),
        "start_date": maybe(st.one_of(TEXT, st.just("2026-11-26T10:00:00"))),
        "truncated": maybe(st.booleans()),
    },
)

COUNTS = st.dictionaries(STATUS, maybe(NUMBER), max_size=4)

STATS_ROW = st.fixed_dictionaries(
    {
        key: maybe(NUMBER)
        for key in ("count", "gpu", "total_hrs", "total_err_hrs", "avg_hrs", "min_hrs", "max_hrs")
    },
    optional={"stddev_hrs": maybe(NUMBER), "efficiency": maybe(NUMBER)},
)

DATASET = st.tuples(
    TEXT,
    ROW,
    maybe(COUNTS),
    maybe(st.dictionaries(TEXT, maybe(COUNTS), max_size=3)),
    maybe(st.dictionaries(TEXT, maybe(STATS_ROW), max_size=2)),
)

#: the IceProd-wide active tasks, CPU then GPU
ACTIVE = st.tuples(maybe(COUNTS), maybe(COUNTS))


def source_of(datasets: list[tuple[Any, ...]], active: Any) -> FakeSource:
    source = FakeSource()
    for gpu, body in zip(("false", "true"), active, strict=True):
        source.answers[f"/task_counts/status?gpu={gpu}"] = body
    for dataset_id, row, jobs, tasks, stats in datasets:
        source.datasets[dataset_id] = row
        source.answers[f"/datasets/{dataset_id}/job_counts/status"] = jobs
        source.answers[f"/datasets/{dataset_id}/task_counts/name_status"] = tasks
        source.answers[f"/datasets/{dataset_id}/task_stats"] = stats
    return source
