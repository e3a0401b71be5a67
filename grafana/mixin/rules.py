"""Recording rules as data, and the rule types the alerts use too.

Naming follows the Prometheus convention level:metric:operations: level ``iceprod`` is one
series for the whole installation, ``dataset`` one per dataset; the metric is the source metric
without its ``iceprod_`` prefix; the operations say what was done to it.

Task counts are gauges (``iceprod_dataset_tasks``), not counters: throughput uses ``deriv()``,
never ``rate()``, and a falling count (a reset of tasks) reads as 0, never as negative
throughput. The throughput window is part of the recorded names (``deriv1h``), so it is not a
setting. One Prometheus per IceProd installation is assumed: if one Prometheus scrapes several,
add the target label that tells them apart to every ``by (...)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import Config
from .promql import one_copy


@dataclass(frozen=True)
class Record:
    """A recording rule; ``comment`` is written above it in the rule file."""

    record: str
    expr: str
    comment: str = ""

    def rule(self) -> dict[str, Any]:
        """The rule as Prometheus reads it."""
        return {"record": self.record, "expr": self.expr}


@dataclass(frozen=True)
class Alert:
    """An alerting rule; ``about`` says what it concerns: exporter, iceprod, dataset or grid.

    Alerts about a dataset carry the dataset's owner labels (see :func:`.promql.with_owners`).
    """

    name: str
    about: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    dashboard_url: str
    comment: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    def rule(self) -> dict[str, Any]:
        """The rule as Prometheus reads it."""
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity, **self.labels},
            "annotations": {
                "summary": self.summary,
                "description": self.description,
                "dashboard_url": self.dashboard_url,
            },
        }


@dataclass(frozen=True)
class Group:
    """A rule group."""

    name: str
    rules: tuple[Record | Alert, ...]

    def group(self) -> dict[str, Any]:
        """The group as Prometheus reads it."""
        return {"name": self.name, "rules": [r.rule() for r in self.rules]}


def _complete(status: str) -> str:
    return f'dataset:dataset_tasks:sum_by_status{{status="{status}"}}'


def groups(cfg: Config) -> list[Group]:
    """The recording rule groups."""
    tasks = one_copy("iceprod_dataset_tasks", cfg)
    return [
        Group(
            "iceprod-dataset.rules",
            (
                Record(
                    "dataset:dataset_tasks:sum_by_status",
                    f"sum by (dataset, status) ({tasks})",
                    "Tasks of each dataset by status, summed over task names (one copy per "
                    "replica first).",
                ),
                Record(
                    "dataset:dataset_tasks_completed:deriv1h",
                    f"sum by (dataset) (\n  clamp_min(deriv({_complete('complete')}[1h]), 0)\n)",
                    "Tasks completed per second, from the slope of the complete count over the "
                    "last hour. iceprod_dataset_tasks is a gauge (a task reset can lower it), so "
                    "deriv() is used rather than rate(); a falling count reads as 0.",
                ),
                Record(
                    "dataset:dataset_tasks_failed:deriv1h",
                    f"sum by (dataset) (\n  clamp_min(deriv({_complete('failed')}[1h]), 0)\n)",
                    "Tasks entering `failed` per second (same method; resets back to waiting "
                    "read as 0).",
                ),
                Record(
                    "dataset:dataset_tasks_failed:ratio",
                    f"sum by (dataset) ({_complete('failed')})\n"
                    "/\n"
                    "(sum by (dataset) "
                    '(dataset:dataset_tasks:sum_by_status{status=~"failed|complete"}) > 0)',
                    "Share (0-1) of the finished tasks that are failed: failed / (failed + "
                    "complete). No series while a dataset has no finished task.",
                ),
                Record(
                    "dataset:dataset_tasks_remaining:sum",
                    "clamp_min(\n"
                    "  sum by (dataset) "
                    f"({one_copy('iceprod_dataset_tasks_submitted', cfg)})\n"
                    f"  - sum by (dataset) ({_complete('complete')}),\n"
                    "  0\n"
                    ")",
                    "Tasks still to complete: submitted minus complete (includes tasks of jobs "
                    "not materialized yet, failed and suspended tasks).",
                ),
            ),
        ),
        Group(
            "iceprod-fleet.rules",
            (
                Record(
                    "iceprod:dataset_tasks:sum_by_status",
                    f"sum by (status) ({tasks})",
                    "IceProd-wide totals (all datasets, all shards, one copy per replica) by "
                    "status.",
                ),
                Record(
                    "iceprod:dataset_jobs:sum_by_status",
                    f"sum by (status) ({one_copy('iceprod_dataset_jobs', cfg)})",
                ),
                Record(
                    "iceprod:dataset_tasks_completed:deriv1h",
                    "sum(dataset:dataset_tasks_completed:deriv1h)",
                    "IceProd-wide task completion and failure throughput (tasks per second).",
                ),
                Record(
                    "iceprod:dataset_tasks_failed:deriv1h",
                    "sum(dataset:dataset_tasks_failed:deriv1h)",
                ),
                Record(
                    "iceprod:dataset_tasks_failed:ratio",
                    'sum(iceprod:dataset_tasks:sum_by_status{status="failed"})\n'
                    "/\n"
                    '(sum(iceprod:dataset_tasks:sum_by_status{status=~"failed|complete"}) > 0)',
                    "IceProd-wide share of finished tasks that are failed.",
                ),
            ),
        ),
    ]


HEADER = """\
Recording rules for iceprod-exporter: `iceprod:*` one series for the whole IceProd installation,
`dataset:*` one series per dataset (label `dataset`, the dataset number). The dashboards and
alerts.yaml read them.

High availability and sharding: every raw per-dataset series is reduced to one copy with
  max without (instance, pod) (...)
before anything is summed: the copies of two identical replicas differ only in `instance` and
`pod`, and shards export disjoint datasets. The sums therefore give the same totals for one
exporter, two replicas, N shards, two replicas per shard, and during the overlap while datasets
move between shards. The exporter's own metrics (iceprod_exporter_*, iceprod_up) are per
replica on purpose and are not recorded here.
"""
