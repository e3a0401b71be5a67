"""Recording rules as data, and the rule types the alerts use too.

Naming follows the Prometheus convention level:metric:operations: level ``iceprod`` is one
series for the whole installation, ``dataset`` one per dataset, ``dataset_task`` one per dataset
and task name (the joins of other IceProd exporters' series); the metric is the source metric
without its ``iceprod_`` prefix (and a counter's ``_total``); the operations say what was done
to it.

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


def flagged(metric: str) -> str:
    """Datasets whose 0/1 flag (``iceprod_dataset_truncated``, ...) is 1, one series each."""
    return f"(max by (dataset) ({metric}) == 1)"


#: datasets IceProd completes on the jobs they have (their owners asked for no more)
TRUNCATED = flagged("iceprod_dataset_truncated")
#: datasets IceProd never completes: no planned total, no progress, no time to completion
ALWAYS_ACTIVE = flagged("iceprod_dataset_always_active")


def _planned(submitted: str, materialized: str) -> str:
    """The total a dataset works towards: IceProd's, or what exists when truncated."""
    return (
        "(\n"
        "  (\n"
        f"    max by (dataset) ({submitted})\n"
        f"    unless on (dataset) {TRUNCATED}\n"
        "  )\n"
        "  or\n"
        f"  ({materialized} and on (dataset) {TRUNCATED})\n"
        ")\n"
        f"unless on (dataset) {ALWAYS_ACTIVE}"
    )


def _joined(expr: str, *renames: tuple[str, str]) -> str:
    """``expr`` with each (ours, theirs) label copied from another exporter's label name."""
    for ours, theirs in renames:
        expr = f'label_replace(\n  {expr},\n  "{ours}", "$1", "{theirs}", "(.+)"\n)'
    return expr


def _join_rules(cfg: Config) -> Group:
    """Other IceProd exporters' series on our labels (``dataset`` number, ``task_name``)."""
    grid = f'job="{cfg.grid_job}"'
    # condor_history writes "None" for a job without the IceProd attributes (not IceProd's)
    condor = f'job="{cfg.condor_history_job}", IceProdDataset!="None"'
    condor_labels = (("dataset", "IceProdDataset"), ("task_name", "IceProdTaskName"))

    def condor_rate(series: str) -> str:
        return _joined(f"rate({series}{{{condor}}}[1h])", *condor_labels)

    def condor_mean(histogram: str) -> str:
        by = "sum by (dataset, task_name) "
        return (
            f"{by}(\n{condor_rate(histogram + '_sum')}\n)\n"
            f"/\n({by}(\n{condor_rate(histogram + '_count')}\n) > 0)"
        )

    return Group(
        "iceprod-joins.rules",
        (
            Record(
                "dataset_task:grid_submit_datasets:rate1h",
                "sum by (dataset, task_name, success) (\n"
                + _joined(
                    f"rate(iceprod_grid_submit_datasets_total{{{grid}}}[1h])",
                    ("task_name", "task"),
                )
                + "\n)",
                "Tasks the grid daemons submitted to HTCondor per second, by dataset, task name "
                "and success (fail: the submit failed and the tasks were reset to waiting), "
                "summed over the grids. The grid daemon labels the task name `task`.",
            ),
            Record(
                "dataset_task:condor_job_walltime_hours:rate1h",
                "sum by (dataset, task_name, usage, kind) (\n"
                + condor_rate("condor_job_walltime_hours_total")
                + "\n)",
                "HTCondor walltime (hours per second) of the finished jobs of each dataset and "
                "task name, by usage (goodput: exit code 0; badput: the rest) and kind (CPU, "
                "GPU), from condor_history_to_prometheus.py (WIPACrepo/monitoring-scripts), "
                "whose labels IceProdDataset (the dataset number) and IceProdTaskName become "
                "dataset and task_name.",
            ),
            Record(
                "dataset_task:condor_job_count:rate1h",
                "sum by (dataset, task_name, usage) (\n"
                + condor_rate("condor_job_count_total")
                + "\n)",
                "HTCondor jobs of each dataset and task name finishing per second, by usage.",
            ),
            Record(
                "dataset_task:condor_job_mem_used:mean1h",
                condor_mean("condor_job_mem_used"),
                "Mean resident memory (GiB) of the HTCondor jobs of each dataset and task name "
                "that finished in the last hour.",
            ),
            Record(
                "dataset_task:condor_job_mem_req:mean1h",
                condor_mean("condor_job_mem_req"),
                "Mean memory request (GiB) of the same jobs: IceProd raises a task's request to "
                "1.5 times what it used when it resets the task.",
            ),
        ),
    )


def groups(cfg: Config) -> list[Group]:
    """The recording rule groups."""
    tasks = one_copy("iceprod_dataset_tasks", cfg)
    jobs_complete = one_copy('iceprod_dataset_jobs{status="complete"}', cfg)
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
                    "dataset:dataset_jobs:sum",
                    f"sum by (dataset) ({one_copy('iceprod_dataset_jobs', cfg)})",
                    "Materialized jobs of each dataset (every status).",
                ),
                Record(
                    "dataset:dataset_jobs_planned:sum",
                    _planned("iceprod_dataset_jobs_submitted", "dataset:dataset_jobs:sum"),
                    "Jobs the dataset works towards: jobs_submitted, or the materialized jobs "
                    "once it is truncated (dataset_completion completes it as soon as "
                    "those are complete). No series for an always-active dataset: IceProd never "
                    "completes it.",
                ),
                Record(
                    "dataset:dataset_tasks_planned:sum",
                    _planned(
                        "iceprod_dataset_tasks_submitted",
                        "sum by (dataset) (dataset:dataset_tasks:sum_by_status)",
                    ),
                    "Tasks the dataset works towards, likewise: tasks_submitted, or the "
                    "materialized tasks of a truncated dataset; none for an always-active one.",
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
                    "Tasks entering `failed` per second (same method). A failed task had an "
                    "error IceProd does not retry; transient errors reset the task to waiting "
                    "and never show here.",
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
                    "  dataset:dataset_tasks_planned:sum\n"
                    f"  - on (dataset) sum by (dataset) ({_complete('complete')}),\n"
                    "  0\n"
                    ")",
                    "Tasks still to complete: planned minus complete (tasks of jobs not "
                    "materialized yet, failed and suspended tasks included). None for an "
                    "always-active dataset.",
                ),
                Record(
                    "dataset:dataset_jobs_complete:ratio",
                    f"sum by (dataset) ({jobs_complete})\n"
                    "/ on (dataset)\n"
                    "(dataset:dataset_jobs_planned:sum > 0)",
                    "Progress (0-1): complete jobs over planned jobs, so a truncated dataset "
                    "reaches 1 on the jobs it has. None for an always-active dataset.",
                ),
                Record(
                    "dataset:dataset_time_to_completion:seconds",
                    "dataset:dataset_tasks_remaining:sum\n"
                    "/ on (dataset)\n"
                    "(dataset:dataset_tasks_completed:deriv1h > 0)",
                    "Estimated time to completion: remaining tasks over the completion rate of "
                    "the last hour. None while nothing completed in the last hour, and for an "
                    "always-active dataset. The dashboards and alerts read this one series.",
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
                Record(
                    "iceprod:active_tasks:sum_by_resource_status",
                    f"sum by (resource, status) ({one_copy('iceprod_active_tasks', cfg)})",
                    "IceProd-wide tasks idle, waiting, queued and processing by resource kind "
                    "(cpu, gpu) as /task_counts/status?gpu= splits them; every dataset whatever "
                    "its status. Exported by shard 0 only.",
                ),
            ),
        ),
        _join_rules(cfg),
    ]


HEADER = """\
Recording rules for iceprod-exporter: `iceprod:*` one series for the whole IceProd installation,
`dataset:*` one series per dataset (label `dataset`, the dataset number), `dataset_task:*` one
per dataset and task name: the series of IceProd's grid daemons (job iceprod-grid, label `task`)
and of condor_history_to_prometheus.py (job condor-history, labels `IceProdDataset`,
`IceProdTaskName`) put on this exporter's labels `dataset` and `task_name`. The dashboards and
alerts.yaml read them.

High availability and sharding: every raw per-dataset series is reduced to one copy with
  max without (instance, pod) (...)
before anything is summed: the copies of two identical replicas differ only in `instance` and
`pod`, and shards export disjoint datasets. The sums therefore give the same totals for one
exporter, two replicas, N shards, two replicas per shard, and during the overlap while datasets
move between shards. The exporter's own metrics (iceprod_exporter_*, iceprod_up) are per
replica on purpose and are not recorded here.
"""
