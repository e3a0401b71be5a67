"""IceProd as a whole: what is running, how fast it completes and fails, what needs a look.

The dataset tables and the fastest datasets follow ``$group`` and ``$username``, so an IceProd
group or a user sees their own datasets; the IceProd-wide panels stay IceProd-wide.
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
    thresholds,
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
    jobs_complete = one_copy('iceprod_dataset_jobs{status="complete"}', cfg)
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
            "failed tasks reads as 0) and the share of finished tasks that are failed.",
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
            "Every processing dataset of $group / $username: share of jobs complete, tasks "
            "completed per hour over the last hour, failed tasks, and the estimated time to "
            "completion (tasks not yet complete / completion rate; empty when nothing "
            "completed in the last hour).",
            table_query(
                f"sum by (dataset) ({jobs_complete})\n"
                "/ on (dataset) (max by (dataset) (iceprod_dataset_jobs_submitted) > 0)\n"
                f"{PROCESSING_ONLY}"
            ),
            table_query(f"dataset:dataset_tasks_completed:deriv1h * 3600\n{PROCESSING_ONLY}"),
            table_query(f"{failed}\n{PROCESSING_ONLY}"),
            table_query(
                "dataset:dataset_tasks_remaining:sum\n"
                "/ on (dataset) (dataset:dataset_tasks_completed:deriv1h > 0)\n"
                f"{PROCESSING_ONLY}"
            ),
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
    silence = thresholds(
        (None, "green"), (cfg.grid_late_seconds, "orange"), (cfg.grid_silent_seconds, "red")
    ).build()
    grids = [
        table_panel(
            "Grids",
            "Grids (HTCondor submit sites) registered with IceProd, the longest silent first: "
            "host, IceProd version, and the time since the grid last reported (its daemon "
            f"PATCHes last_update regularly). Orange after {spoken(cfg.grid_late_seconds)} "
            f"(several missed reports), red after {spoken(cfg.grid_silent_seconds)} "
            f"(IceProdGridSilent fires when that lasts {spoken(cfg.grid_silent_for)} more). "
            "From GET /grids, read by shard 0; empty when the "
            "exporter's token may not read /grids.",
            table_query("max by (grid, host, version) (iceprod_grid_info)"),
            table_query("time() - max by (grid) (iceprod_grid_last_update_timestamp_seconds)"),
            height=7,
        )
        .override_by_name(
            "Silent for",
            [
                *unit("s"),
                models.DynamicConfigValue(
                    id_val="custom.cellOptions",
                    value={"type": "color-background"},
                ),
                models.DynamicConfigValue(id_val="thresholds", value=silence),
            ],
        )
        .with_transformation(transformation("merge"))
        .with_transformation(
            organize(
                exclude=("Time", "Value #A"),
                order=("grid", "host", "version", "Value #B"),
                rename={"Value #B": "Silent for"},
            )
        )
        .with_transformation(sort_by("Silent for", desc=True)),
    ]
    return dashboard_model(
        cfg.overview_uid,
        "IceProd overview",
        "IceProd as a whole: datasets and tasks by status, completion and failure throughput, "
        "and the datasets that need attention, for all datasets or those of one IceProd group "
        "or user ($group, $username). Data: iceprod-exporter.",
        owner_variables(),
        [
            ("IceProd now", now),
            ("Throughput", throughput),
            ("Datasets of $group / $username", datasets),
            ("Grids", grids),
        ],
    )
