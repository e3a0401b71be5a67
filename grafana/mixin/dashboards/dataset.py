"""One dataset: progress, status per task name, failures, walltime, time to completion.

``$group`` and ``$username`` narrow the ``$dataset`` list to the datasets of one IceProd group
or user.
"""

from __future__ import annotations

from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as models

from iceprod_exporter.model.snapshot import TASK_STATUSES

from ..config import Config
from ..panels import (
    colour,
    dashboard_model,
    fixed_colour,
    gauge_panel,
    organize,
    owner_variables,
    query,
    query_variable,
    stat_panel,
    table_panel,
    table_query,
    thresholds,
    timeseries_panel,
    transformation,
    unit,
    value_mapping,
)
from ..promql import INFO, TO_RUN, one_copy, selector

D = 'dataset="$dataset"'
DT = 'dataset="$dataset", task_name=~"$task_name"'
COMPLETE = 'status="complete"'
FAILED = 'status="failed"'
WALLTIME_STATS = {
    "iceprod_dataset_task_walltime_mean_seconds": "mean",
    "iceprod_dataset_task_walltime_stddev_seconds": "std dev",
    "iceprod_dataset_task_walltime_min_seconds": "min",
    "iceprod_dataset_task_walltime_max_seconds": "max",
    "iceprod_dataset_task_efficiency_ratio": "efficiency",
    "iceprod_dataset_task_gpu": "GPU",
}
TASK_STATUS_COLUMNS = ("task_name\\status", *TASK_STATUSES)


def build(cfg: Config) -> models.Dashboard:
    """The dataset dashboard."""

    def one(metric: str, *matchers: str) -> str:
        return one_copy(selector(metric, *matchers), cfg)

    complete_share = thresholds((None, "blue"), (1, "green"))
    summary = [
        stat_panel(
            "Status",
            "The dataset's IceProd status.",
            query(f"max by (status) (iceprod_dataset_status{{{D}}}) == 1", "{{status}}"),
            height=4,
        )
        .text_mode(common_models.BigValueTextMode.NAME)
        .color_mode(common_models.BigValueColorMode.BACKGROUND)
        .color_scheme(fixed_colour("blue"))
        .override_by_name("errors", colour("red"))
        .override_by_name("suspended", colour("orange"))
        .override_by_name("complete", colour("green")),
        stat_panel(
            "Description",
            "Description, group and submitting user (iceprod_dataset_info).",
            query(f"topk(1, {INFO}{{{D}}})", "{{description}} ({{group}}, {{username}})"),
            width=8,
            height=4,
        )
        .text_mode(common_models.BigValueTextMode.NAME)
        .color_mode(common_models.BigValueColorMode.NONE),
        stat_panel(
            "Submitted",
            "When the dataset was submitted.",
            query(f"max(iceprod_dataset_start_timestamp_seconds{{{D}}}) * 1000", "submitted"),
            unit="dateTimeFromNow",
            height=4,
        ).color_mode(common_models.BigValueColorMode.NONE),
        stat_panel(
            "Counts read",
            "When the job and task counts were last read: every poll while they change, every "
            "quiet_poll_interval (5 min) once they are quiet.",
            query(f"max(iceprod_dataset_counted_timestamp_seconds{{{D}}}) * 1000", "counts read"),
            unit="dateTimeFromNow",
            height=4,
        ).color_mode(common_models.BigValueColorMode.NONE),
        stat_panel(
            "Priority",
            "Dataset priority in IceProd.",
            query(f"max(iceprod_dataset_priority{{{D}}})", "priority"),
            height=4,
        ).color_mode(common_models.BigValueColorMode.NONE),
        stat_panel(
            "Jobs not materialized",
            "Jobs the dataset plans that IceProd's materialization has not created yet: "
            "jobs_submitted (as IceProd holds it now) minus the materialized jobs, and 0 once "
            "the dataset is truncated (IceProd completes it without them).",
            query(
                f"dataset:dataset_jobs_planned:sum{{{D}}} - dataset:dataset_jobs:sum{{{D}}}\n"
                "or\n"
                f"max by (dataset) (iceprod_dataset_jobs_submitted{{{D}}})\n"
                f"- dataset:dataset_jobs:sum{{{D}}}",
                "not materialized",
            ),
            height=6,
        ).color_mode(common_models.BigValueColorMode.NONE),
        stat_panel(
            "Truncated / always active",
            "Truncated: IceProd completes the dataset as soon as the jobs it has are complete, "
            "so its progress counts those only. Always active: "
            "IceProd never completes it, so it has no progress or time to completion.",
            query(f"max(iceprod_dataset_truncated{{{D}}})", "truncated"),
            query(f"max(iceprod_dataset_always_active{{{D}}})", "always active"),
            height=6,
        )
        .color_mode(common_models.BigValueColorMode.NONE)
        .text_mode(common_models.BigValueTextMode.VALUE_AND_NAME)
        .mappings(value_mapping(("0", "no", None), ("1", "yes", None))),
        gauge_panel(
            "Jobs complete",
            "Complete jobs over planned jobs: jobs_submitted, or the materialized jobs of a "
            "truncated dataset (dataset:dataset_jobs_complete:ratio). Empty for an "
            "always-active dataset.",
            query(f"dataset:dataset_jobs_complete:ratio{{{D}}}", "jobs"),
            unit="percentunit",
        )
        .min(0)
        .max(1)
        .thresholds(complete_share),
        gauge_panel(
            "Tasks complete",
            "Complete tasks over planned tasks: tasks_submitted, or the materialized tasks of a "
            "truncated dataset. Empty for an always-active dataset.",
            query(
                f"sum by (dataset) ({one('iceprod_dataset_tasks', D, COMPLETE)})\n"
                f"/ (dataset:dataset_tasks_planned:sum{{{D}}} > 0)",
                "tasks",
            ),
            unit="percentunit",
        )
        .min(0)
        .max(1)
        .thresholds(complete_share),
        stat_panel(
            "Estimated time to completion",
            "Planned tasks not yet complete (including those of jobs not materialized, unless "
            "the dataset is truncated) divided by the completion rate of the last hour "
            "(dataset:dataset_time_to_completion:seconds, which the alerts read too). Empty "
            "when no task completed in the last hour, and for an always-active dataset.",
            query(f"dataset:dataset_time_to_completion:seconds{{{D}}}", "time to completion"),
            unit="s",
            height=6,
        )
        .color_mode(common_models.BigValueColorMode.NONE)
        .no_value("none"),
        stat_panel(
            "Tasks completed per hour",
            "Completion rate over the last hour, and the tasks not yet complete.",
            query(f"dataset:dataset_tasks_completed:deriv1h{{{D}}} * 3600", "per hour"),
            query(f"dataset:dataset_tasks_remaining:sum{{{D}}}", "remaining"),
            height=6,
        )
        .color_mode(common_models.BigValueColorMode.NONE)
        .text_mode(common_models.BigValueTextMode.VALUE_AND_NAME),
    ]
    status = [
        timeseries_panel(
            "Tasks by status",
            "Tasks of the selected task names by status.",
            query(f"sum by (status) ({one('iceprod_dataset_tasks', DT)})", "{{status}}"),
        ),
        timeseries_panel(
            "Jobs by status",
            "Materialized jobs by status.",
            query(f"sum by (status) ({one('iceprod_dataset_jobs', D)})", "{{status}}"),
        ),
        table_panel(
            "Tasks per task name and status",
            "Current task counts: one row per task name, one column per status.",
            table_query(f"sum by (task_name, status) ({one('iceprod_dataset_tasks', DT)})"),
            height=7,
        )
        .with_transformation(
            transformation(
                "groupingToMatrix", columnField="status", rowField="task_name", valueField="Value"
            )
        )
        .with_transformation(
            organize(order=TASK_STATUS_COLUMNS, rename={"task_name\\status": "task name"})
        ),
    ]
    completed = one_copy(
        f'clamp_min(deriv(\n  iceprod_dataset_tasks{{{DT}, status="complete"}}[1h]\n), 0)', cfg
    )
    failures = [
        timeseries_panel(
            "Completed tasks per hour",
            "Per task name: slope of the complete count over the last hour.",
            query(f"sum by (task_name) ({completed}) * 3600", "{{task_name}}"),
            width=8,
        ).min(0),
        timeseries_panel(
            "Failed tasks",
            "Tasks in status failed: an error IceProd does not retry, which needs a person "
            "(read the task's log, fix the cause, reset the task). Errors IceProd deems "
            "transient reset the task to waiting instead and never show here: the overview's "
            "Resets and failures per site shows them.",
            query(
                f"sum by (task_name) ({one('iceprod_dataset_tasks', DT, FAILED)})",
                "{{task_name}}",
            ),
            width=8,
        ),
        timeseries_panel(
            "Failed share of finished tasks",
            "failed / (failed + complete) per task name.",
            query(
                f"sum by (task_name) ({one('iceprod_dataset_tasks', DT, FAILED)})\n"
                "/ (sum by (task_name) "
                f"""({one("iceprod_dataset_tasks", DT, 'status=~"failed|complete"')}) > 0)""",
                "{{task_name}}",
            ),
            unit="percentunit",
            width=8,
        )
        .min(0)
        .max(1),
    ]
    to_run = one("iceprod_dataset_tasks", DT, f'status=~"{TO_RUN}"')
    walltime = [
        timeseries_panel(
            "Mean walltime",
            "Mean walltime of complete tasks per task name (from task_stats, refreshed every "
            "task_stats_interval).",
            query(
                f"max by (task_name) (iceprod_dataset_task_walltime_mean_seconds{{{DT}}})",
                "{{task_name}}",
            ),
            unit="s",
            width=8,
        ),
        timeseries_panel(
            "Efficiency",
            "Good walltime over all walltime of complete tasks (the walltime of earlier "
            "attempts that ended in an error lowers it). No line while IceProd has no walltime "
            "for them: its 0 then means unknown, not waste.",
            query(
                f"max by (task_name) (iceprod_dataset_task_efficiency_ratio{{{DT}}})",
                "{{task_name}}",
            ),
            unit="percentunit",
            width=8,
        )
        .min(0)
        .max(1),
        timeseries_panel(
            "Walltime used",
            "Walltime of complete tasks, and of their earlier attempts that ended in an error "
            "(reset to waiting) before they completed.",
            query(f"sum({one('iceprod_dataset_task_walltime_complete_seconds', DT)})", "complete"),
            query(
                f"sum({one('iceprod_dataset_task_walltime_error_seconds', DT)})",
                "lost to errors",
            ),
            unit="s",
            width=8,
        ),
        table_panel(
            "Walltime per task name",
            "Walltime statistics of complete tasks, and whether they required GPUs (IceProd "
            "schedules GPU and CPU tasks apart). Empty until a task of the name completed.",
            *(table_query(f"max by (task_name) ({metric}{{{DT}}})") for metric in WALLTIME_STATS),
            unit="s",
            width=16,
            height=7,
        )
        .override_by_name("efficiency", unit("percentunit"))
        .override_by_name(
            "GPU",
            [
                *unit("none"),
                models.DynamicConfigValue(
                    id_val="mappings",
                    value=value_mapping(("0", "no", None), ("1", "yes", None)),
                ),
            ],
        )
        .with_transformation(transformation("merge"))
        .with_transformation(
            organize(
                exclude=("Time", "dataset", "instance", "job"),
                order=("task_name",),
                rename={
                    **{
                        f"Value #{chr(ord('A') + i)}": n
                        for i, n in enumerate(WALLTIME_STATS.values())
                    },
                    "task_name": "task name",
                },
            )
        ),
        stat_panel(
            "Walltime still to run",
            "Estimate: tasks idle, waiting, queued or processing times the mean walltime of "
            "their task name (jobs not yet materialized are not included).",
            query(
                "sum(\n"
                f"  sum by (dataset, task_name) ({to_run})\n"
                "  * on (dataset, task_name)\n"
                "  max by (dataset, task_name) (iceprod_dataset_task_walltime_mean_seconds"
                f"{{{DT}}})\n"
                ")",
                "walltime to run",
            ),
            unit="s",
            width=8,
            height=7,
        ).color_mode(common_models.BigValueColorMode.NONE),
    ]
    htcondor = [
        timeseries_panel(
            "Submitted to HTCondor per hour",
            "Tasks the grid daemons submitted to HTCondor per hour, by task name and success "
            "(fail: the submit failed and the tasks were reset to waiting); the grid daemons' "
            "iceprod_grid_submit_datasets on our labels (dataset_task:grid_submit_datasets:"
            "rate1h).",
            query(
                f"sum by (task_name, success) (dataset_task:grid_submit_datasets:rate1h{{{DT}}})"
                " * 3600",
                "{{task_name}} {{success}}",
            ),
            width=6,
        ).min(0),
        timeseries_panel(
            "HTCondor walltime by outcome",
            "HTCondor walltime of the dataset's finished jobs, in hours per hour (the jobs "
            "running on average), by task name and usage: goodput (exit code 0) or badput. From "
            "condor_history_to_prometheus.py (dataset_task:condor_job_walltime_hours:rate1h).",
            query(
                "sum by (task_name, usage) "
                f"(dataset_task:condor_job_walltime_hours:rate1h{{{DT}}}) * 3600",
                "{{task_name}} {{usage}}",
            ),
            width=6,
        ).min(0),
        timeseries_panel(
            "HTCondor jobs finished per hour",
            "The dataset's HTCondor jobs finishing per hour, by task name and usage "
            "(dataset_task:condor_job_count:rate1h).",
            query(
                f"sum by (task_name, usage) (dataset_task:condor_job_count:rate1h{{{DT}}}) * 3600",
                "{{task_name}} {{usage}}",
            ),
            width=6,
        ).min(0),
        timeseries_panel(
            "HTCondor memory used and requested",
            "Mean resident memory and mean memory request of the jobs that finished in the "
            "last hour, per task name (dataset_task:condor_job_mem_{used,req}:mean1h). IceProd "
            "raises a reset task's request to 1.5 times what it used.",
            query(f"dataset_task:condor_job_mem_used:mean1h{{{DT}}}", "{{task_name}} used"),
            query(f"dataset_task:condor_job_mem_req:mean1h{{{DT}}}", "{{task_name}} requested"),
            unit="gbytes",
            width=6,
        ).min(0),
    ]
    owned = 'iceprod_dataset_info{group=~"$group", username=~"$username"}'
    return dashboard_model(
        cfg.dataset_uid,
        "IceProd dataset",
        "One IceProd dataset: progress, status per task name, failures, walltime and "
        "efficiency, and an estimated time to completion. $group and $username narrow the "
        "list of datasets to those of one IceProd group or user.",
        [
            *owner_variables(),
            query_variable("dataset", "Dataset", f"label_values({owned}, dataset)", numeric=True),
            query_variable(
                "task_name",
                "Task name",
                f"label_values(iceprod_dataset_tasks{{{D}}}, task_name)",
                multi=True,
            ),
        ],
        [
            ("Dataset $dataset", summary),
            ("Status ($task_name)", status),
            ("Throughput and failures ($task_name)", failures),
            ("Walltime and efficiency ($task_name)", walltime),
            ("HTCondor ($task_name)", htcondor),
        ],
    )
