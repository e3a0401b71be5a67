"""IceProd as a whole: what is running, how fast it completes and fails, what needs a look.

The dataset tables and the fastest datasets follow ``$group`` and ``$username``, so an IceProd
group or a user sees their own datasets; the IceProd-wide panels stay IceProd-wide. The backlog
by resource kind comes from shard 0; the grid rows from the grid daemons' own metrics (job
``Config.grid_job``): IceProd 3 never updates ``/grids``.
"""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as models

from ..config import Config, percent, spoken
from ..panels import (
    OWNED,
    colour,
    dashboard_model,
    dataset_link,
    fixed_colour,
    organize,
    owner_variables,
    query,
    right_axis,
    sort_by,
    stat_panel,
    table_panel,
    table_query,
    timeseries_panel,
    transformation,
    unit,
    up_mapping,
)
from ..promql import INFO, PROCESSING, TO_RUN, one_copy

#: dataset metadata joined onto a per-dataset result; topk keeps one series per dataset even
#: while two replicas (or an old and a new shard) briefly disagree about the description
INFO_JOIN = (
    f"* on (dataset) group_left (description, group, username)\ntopk by (dataset) (1, {INFO})"
)
OWNED_ONLY = f"and on (dataset) {OWNED}"
PROCESSING_ONLY = f"and on (dataset) ({PROCESSING})\n{OWNED_ONLY}"


def _attention(cfg: Config) -> str:
    failed = 'sum by (dataset) (dataset:dataset_tasks:sum_by_status{status="failed"})'
    return (
        "(\n"
        "  (\n"
        f"    {failed}\n"
        "    * on (dataset) group_left (status)\n"
        "    topk by (dataset) (1, max by (dataset, status) (iceprod_dataset_status) == 1)\n"
        "  )\n"
        "  and on (dataset)\n"
        "  (\n"
        '      (max by (dataset) (iceprod_dataset_status{status="errors"}) == 1)\n'
        "    or on (dataset)\n"
        f"      (dataset:dataset_tasks_failed:ratio > {cfg.failure_ratio:g})\n"
        "    or on (dataset)\n"
        "      (\n"
        "        (dataset:dataset_tasks_completed:deriv1h == 0)\n"
        "        and on (dataset) (sum by (dataset) "
        f'(dataset:dataset_tasks:sum_by_status{{status=~"{TO_RUN}"}}) > 0)\n'
        f"        and on (dataset) ({PROCESSING})\n"
        "      )\n"
        "  )\n"
        f"  {OWNED_ONLY}\n"
        ")\n"
        f"{INFO_JOIN}"
    )


def build(cfg: Config) -> models.Dashboard:
    """The overview dashboard."""
    failed = 'sum by (dataset) (dataset:dataset_tasks:sum_by_status{status="failed"})'
    now = [
        stat_panel(
            "IceProd API",
            "Whether the exporter's last poll could read IceProd's dataset list (iceprod_up). "
            "Details on the exporter dashboard.",
            query("min(iceprod_up)", "IceProd API"),
        ).mappings(up_mapping("unreachable", "reachable")),
        stat_panel(
            "Datasets by status",
            "Datasets in IceProd by status (iceprod_datasets).",
            query(f"sum by (status) ({one_copy('iceprod_datasets', cfg)})", "{{status}}"),
            width=8,
        )
        .color_scheme(fixed_colour("blue"))
        .override_by_name("errors", colour("red"))
        .override_by_name("suspended", colour("orange"))
        .override_by_name("complete", colour("green")),
        stat_panel(
            "Tasks by status",
            "Tasks of all watched datasets by status (iceprod:dataset_tasks:sum_by_status).",
            query("iceprod:dataset_tasks:sum_by_status", "{{status}}"),
            width=12,
        )
        .color_scheme(fixed_colour("blue"))
        .override_by_name("failed", colour("red"))
        .override_by_name("complete", colour("green")),
    ]
    throughput = [
        timeseries_panel(
            "Tasks by status",
            "Tasks of all datasets by status over time.",
            query("iceprod:dataset_tasks:sum_by_status", "{{status}}"),
        ),
        timeseries_panel(
            "Jobs by status",
            "Materialized jobs of all datasets by status over time.",
            query("iceprod:dataset_jobs:sum_by_status", "{{status}}"),
        ),
        timeseries_panel(
            "Completion throughput",
            "Tasks completed per hour, from the slope of the complete counts over the last "
            "hour: IceProd-wide, and the five fastest datasets of $group / $username.",
            query("iceprod:dataset_tasks_completed:deriv1h * 3600", "all datasets"),
            query(
                f"topk(5, (dataset:dataset_tasks_completed:deriv1h {OWNED_ONLY}) * 3600)",
                "{{dataset}}",
            ),
        ).min(0),
        timeseries_panel(
            "Failure rate",
            "Tasks failing per hour (slope of the failed counts over the last hour; a reset of "
            "failed tasks reads as 0) and the share of finished tasks that are failed. A "
            "failed task had an error IceProd does not retry and needs a person; transient "
            "errors reset tasks to waiting instead (see Resets and failures per site).",
            query("iceprod:dataset_tasks_failed:deriv1h * 3600", "failed tasks / h"),
            query("iceprod:dataset_tasks_failed:ratio", "failed / finished"),
        )
        .min(0)
        .override_by_name("failed / finished", right_axis("percentunit")),
    ]
    datasets = [
        table_panel(
            "Datasets needing attention",
            "Datasets of $group / $username in status errors; with more than "
            f"{percent(cfg.failure_ratio)} of finished tasks failed; or processing with tasks "
            "left but none completed in the last hour. The value is the number of failed "
            "tasks. Click a dataset to open it.",
            table_query(_attention(cfg)),
        )
        .override_by_name("dataset", dataset_link(cfg))
        .with_transformation(
            organize(
                exclude=("Time", "__name__"),
                order=("dataset", "status", "description", "group", "username", "Value"),
                rename={"Value": "Failed tasks"},
            )
        ),
        table_panel(
            "Processing datasets",
            "Every processing dataset of $group / $username: share of its planned jobs complete "
            "(a truncated dataset plans only the jobs it has), tasks completed per hour over "
            "the last hour, failed tasks (errors IceProd does not retry), and the estimated "
            "time to completion (dataset:dataset_time_to_completion:seconds: tasks not yet "
            "complete / completion rate; empty when nothing completed in the last hour). "
            "Always-active datasets never complete: no progress, no time to completion.",
            table_query(f"dataset:dataset_jobs_complete:ratio\n{PROCESSING_ONLY}"),
            table_query(f"dataset:dataset_tasks_completed:deriv1h * 3600\n{PROCESSING_ONLY}"),
            table_query(f"{failed}\n{PROCESSING_ONLY}"),
            table_query(f"dataset:dataset_time_to_completion:seconds\n{PROCESSING_ONLY}"),
            table_query(
                f"max by (dataset, description, group, username) ({INFO})\n{PROCESSING_ONLY}"
            ),
            height=10,
        )
        .override_by_name("dataset", dataset_link(cfg))
        .override_by_name("Jobs complete", unit("percentunit"))
        .override_by_name("Time to completion", unit("s"))
        .override_by_name("Tasks completed / h", unit("short"))
        .with_transformation(transformation("merge"))
        .with_transformation(
            organize(
                exclude=("Time", "Value #E"),
                order=("dataset", "description", "group"),
                rename={
                    "Value #A": "Jobs complete",
                    "Value #B": "Tasks completed / h",
                    "Value #C": "Failed tasks",
                    "Value #D": "Time to completion",
                },
            )
        )
        .with_transformation(sort_by("dataset")),
    ]
    grid = f'job="{cfg.grid_job}"'
    backlog = [
        timeseries_panel(
            "Backlog by resource kind",
            "IceProd-wide tasks idle, waiting, queued and processing, GPU tasks (requiring at "
            "least one GPU) apart from CPU tasks (requiring none), as /task_counts/status?gpu= "
            "splits them; every dataset whatever its status (iceprod_active_tasks, read by "
            "shard 0; empty when the exporter's token may not read /task_counts/status). "
            "Waiting tasks of one kind with none queued or processing for "
            f"{spoken(cfg.resource_starved_for)} fire IceProdResourceStarved; idle tasks while no "
            "task at all is waiting, queued or processing for "
            f"{spoken(cfg.queue_tasks_for)} fire IceProdTaskQueueingStalled.",
            query("iceprod:active_tasks:sum_by_resource_status", "{{resource}} {{status}}"),
            width=24,
        ),
    ]
    grids = [
        table_panel(
            "Grid daemons",
            f"IceProd's grid daemons (Prometheus job {cfg.grid_job}): whether they can be "
            "scraped (IceProdGridDown fires after "
            f"{spoken(cfg.grid_down_for)}), their site, queue type and version "
            '(iceprod_info{type="grid"}), the GPUs its site requirements ask for (the gpu '
            "label of its metrics: 0 on a CPU grid), the tasks IceProd has queued or "
            "processing at the site (iceprod_grid_tasks), and the site's HTCondor jobs idle "
            "and running (iceprod_grid_queue_num). In IceProd 3 /grids is never updated: these "
            "are the daemons' own metrics.",
            table_query(f"max by (instance) (up{{{grid}}})"),
            table_query(
                "max by (instance, name, queue_type, version) "
                f'(iceprod_info{{{grid}, type="grid"}})'
            ),
            table_query(f"sum by (instance, gpu) (iceprod_grid_tasks{{{grid}}})"),
            table_query(f'sum by (instance) (iceprod_grid_queue_num{{{grid}, status="idle"}})'),
            table_query(
                f'sum by (instance) (iceprod_grid_queue_num{{{grid}, status="processing"}})'
            ),
            height=7,
        )
        .override_by_name("Up", [models.DynamicConfigValue(id_val="mappings", value=up_mapping())])
        .with_transformation(transformation("merge"))
        .with_transformation(
            organize(
                exclude=("Time", "Value #B"),
                order=("instance", "name", "queue_type", "version", "gpu", "Value #A"),
                rename={
                    "name": "site",
                    "gpu": "GPUs",
                    "queue_type": "queue type",
                    "Value #A": "Up",
                    "Value #C": "IceProd tasks on the site",
                    "Value #D": "HTCondor idle",
                    "Value #E": "HTCondor running",
                },
            )
        )
        .with_transformation(sort_by("Up")),
        timeseries_panel(
            "HTCondor jobs per site",
            "Jobs of each grid daemon's HTCondor pool by status (iceprod_grid_queue_num), and "
            "the tasks IceProd has queued or processing there (iceprod_grid_tasks).",
            query(
                f"sum by (site, gpu, status) (iceprod_grid_queue_num{{{grid}}})",
                "{{site}} gpu={{gpu}} {{status}}",
            ),
            query(
                f"sum by (site, gpu) (iceprod_grid_tasks{{{grid}}})",
                "{{site}} gpu={{gpu}} IceProd tasks",
            ),
        ),
        timeseries_panel(
            "Resets and failures per site",
            "Tasks per hour each grid reported back to IceProd: reset (a transient error: the "
            "task goes back to waiting with failures + 1 and its memory, disk and time raised to "
            "1.5 times what it used; never counted as failed), failed (an error IceProd does "
            "not retry: needs a person) and complete. A reset storm shows here although no "
            "task turns failed. From the grid daemons' iceprod_grid_task_{reset,failure,"
            "success} call histograms.",
            *(
                query(
                    f"sum by (site, gpu) (rate(iceprod_grid_task_{outcome}_count{{{grid}}}"
                    "[$__rate_interval])) * 3600",
                    f"{{{{site}}}} gpu={{{{gpu}}}} {legend}",
                )
                for outcome, legend in (
                    ("reset", "reset"),
                    ("failure", "failed"),
                    ("success", "complete"),
                )
            ),
        ).min(0),
    ]
    return dashboard_model(
        cfg.overview_uid,
        "IceProd overview",
        "IceProd as a whole: datasets and tasks by status, completion and failure throughput, "
        "and the datasets that need attention, for all datasets or those of one IceProd group "
        "or user ($group, $username); the backlog by resource kind; the grid daemons. Data: "
        "iceprod-exporter and the grid daemons' own metrics.",
        owner_variables(),
        [
            ("IceProd now", now),
            ("Throughput", throughput),
            ("Datasets of $group / $username", datasets),
            ("Backlog", backlog),
            ("Grids", grids),
        ],
    )
