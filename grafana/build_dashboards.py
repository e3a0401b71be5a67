"""Write the Grafana dashboards in grafana/dashboards/ from the definitions below.

The JSON files are generated: edit this file, then run

    .venv/bin/python grafana/build_dashboards.py

tests/test_dashboards.py fails when the committed JSON differs from what this script writes,
and checks every query against the exporter's metric table (iceprod_exporter/metrics.py) and
the recording rules (deploy/prometheus/recording.yaml). Keeping the layout in code gives every
panel a datasource of ``${datasource}``, a unique id and a gridPos without hand bookkeeping.

Every query of IceProd's state is HA- and shard-safe: a raw per-dataset (or IceProd-wide) series
is first reduced to one copy with :func:`one_copy` (``max without (instance, pod)``) or another
``max``/``topk`` before anything sums it, so two identical replicas count once and shards add up.
tests/test_dashboards.py checks this for every query. The exporter's own metrics stay per
instance (legend ``{{instance}}``) where a slow or failing replica must stand out.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
SCHEMA_VERSION = 39
DS: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}
TAGS = ["iceprod"]

OVERVIEW_UID = "iceprod-overview"
DATASET_UID = "iceprod-dataset"
EXPORTER_UID = "iceprod-exporter"

#: a link from a table cell to the dataset dashboard, keeping the chosen datasource
DATASET_LINK = {
    "title": "Open dataset ${__data.fields.dataset}",
    "url": f"/d/{DATASET_UID}/{DATASET_UID}?var-dataset=${{__data.fields.dataset}}"
    "&${datasource:queryparam}&${__url_time_range}",
}

Json = dict[str, Any]

#: target labels that tell two copies of a series apart (HA replicas; shards use them too)
REPLICA_LABELS = "instance, pod"


def right_axis(matcher: str, options: str, unit: str) -> dict[str, Any]:
    """A field override putting the matched series on a right-hand axis with its own unit."""
    return {
        "matcher": {"id": matcher, "options": options},
        "properties": [
            {"id": "unit", "value": unit},
            {"id": "custom.axisPlacement", "value": "right"},
        ],
    }


def one_copy(selector: str) -> str:
    """One copy of a series exported by identical replicas and/or by several shards.

    Copies from HA replicas differ only in ``instance`` and ``pod``; shards export disjoint
    datasets (``dataset`` is unique across shards), so ``max`` keeps every dataset once.
    """
    return f"max without ({REPLICA_LABELS}) ({selector})"


# ---------------------------------------------------------------------------- building blocks


@dataclass
class Target:
    """One PromQL query of a panel."""

    expr: str
    legend: str = "__auto"
    instant: bool = False
    table: bool = False

    def json(self, ref: str) -> Json:
        """Grafana's target object."""
        return {
            "datasource": DS,
            "editorMode": "code",
            "expr": self.expr,
            "format": "table" if self.table else "time_series",
            "instant": self.instant,
            "legendFormat": self.legend,
            "range": not self.instant,
            "refId": ref,
        }


@dataclass
class Panel:
    """A panel: kind, title, description, queries and size; placed by the layout."""

    kind: str
    title: str
    description: str
    targets: Sequence[Target]
    width: int = 12
    height: int = 8
    unit: str = "short"
    options: Json = field(default_factory=dict)
    defaults: Json = field(default_factory=dict)
    overrides: list[Json] = field(default_factory=list)
    transformations: list[Json] = field(default_factory=list)

    def json(self, panel_id: int, x: int, y: int) -> Json:
        """Grafana's panel object at the given place."""
        return {
            "datasource": DS,
            "description": self.description,
            "fieldConfig": {
                "defaults": {"unit": self.unit, **_kind_defaults(self.kind), **self.defaults},
                "overrides": self.overrides,
            },
            "gridPos": {"h": self.height, "w": self.width, "x": x, "y": y},
            "id": panel_id,
            "options": {**_kind_options(self.kind), **self.options},
            "targets": [t.json(chr(ord("A") + i)) for i, t in enumerate(self.targets)],
            "title": self.title,
            "transformations": self.transformations,
            "type": self.kind,
        }


@dataclass
class Row:
    """A row header; the panels after it belong to it."""

    title: str


def _kind_defaults(kind: str) -> Json:
    if kind == "timeseries":
        return {
            "custom": {
                "drawStyle": "line",
                "fillOpacity": 10,
                "lineWidth": 1,
                "showPoints": "never",
                "spanNulls": False,
                "stacking": {"group": "A", "mode": "none"},
            },
            "color": {"mode": "palette-classic"},
        }
    if kind in ("stat", "gauge", "bargauge"):
        return {"color": {"mode": "thresholds"}}
    return {}


def _kind_options(kind: str) -> Json:
    if kind == "timeseries":
        return {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    if kind == "stat":
        return {
            "colorMode": "value",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "auto",
        }
    if kind in ("gauge", "bargauge"):
        return {
            "orientation": "horizontal",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "showThresholdLabels": False,
            "showThresholdMarkers": True,
        }
    if kind == "table":
        return {"cellHeight": "sm", "footer": {"show": False}, "showHeader": True}
    return {}


def thresholds(*steps: tuple[float | None, str]) -> Json:
    """Absolute thresholds: (None, base colour), then (value, colour) steps."""
    return {
        "thresholds": {
            "mode": "absolute",
            "steps": [{"color": color, "value": value} for value, color in steps],
        }
    }


def up_mapping(down: str = "down", up: str = "up") -> Json:
    """Value mappings of a 0/1 health series."""
    return {
        "mappings": [
            {
                "type": "value",
                "options": {
                    "0": {"color": "red", "index": 0, "text": down},
                    "1": {"color": "green", "index": 1, "text": up},
                },
            }
        ]
    }


def layout(items: Sequence[Panel | Row]) -> list[Json]:
    """Place panels left to right in rows of 24 columns, with ids in order."""
    placed: list[Json] = []
    x = y = 0
    row_height = 0
    for panel_id, item in enumerate(items, start=1):
        if isinstance(item, Row):
            y += row_height
            x, row_height = 0, 0
            placed.append(
                {
                    "collapsed": False,
                    "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                    "id": panel_id,
                    "panels": [],
                    "title": item.title,
                    "type": "row",
                }
            )
            y += 1
            continue
        if x + item.width > 24:
            y += row_height
            x, row_height = 0, 0
        placed.append(item.json(panel_id, x, y))
        x += item.width
        row_height = max(row_height, item.height)
    return placed


def datasource_variable() -> Json:
    """The ``$datasource`` variable every query uses."""
    return {
        "current": {},
        "hide": 0,
        "includeAll": False,
        "label": "Prometheus",
        "multi": False,
        "name": "datasource",
        "options": [],
        "query": "prometheus",
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
        "type": "datasource",
    }


def query_variable(
    name: str, label: str, query: str, *, multi: bool = False, numeric: bool = False
) -> Json:
    """A variable filled from a label_values() query."""
    variable: Json = {
        "current": {},
        "datasource": DS,
        "definition": query,
        "hide": 0,
        "includeAll": multi,
        "label": label,
        "multi": multi,
        "name": name,
        "options": [],
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "regex": "",
        "skipUrlSync": False,
        "sort": 3 if numeric else 1,
        "type": "query",
    }
    if multi:
        variable["allValue"] = ".*"
        variable["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
    return variable


def dashboard(
    uid: str, title: str, description: str, variables: list[Json], items: Sequence[Panel | Row]
) -> Json:
    """A whole dashboard: links to the other IceProd boards, variables, panels."""
    return {
        "annotations": {"list": []},
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [
            {
                "asDropdown": False,
                "icon": "external link",
                "includeVars": False,
                "keepTime": True,
                "tags": TAGS,
                "targetBlank": False,
                "title": "IceProd dashboards",
                "type": "dashboards",
            }
        ],
        "panels": layout(items),
        "refresh": "1m",
        "schemaVersion": SCHEMA_VERSION,
        "tags": TAGS,
        "templating": {"list": [datasource_variable(), *variables]},
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


# ---------------------------------------------------------------------------- overview

PROCESSING = 'max by (dataset) (iceprod_dataset_status{status="processing"}) == 1'
#: seconds without a grid report: late (several missed reports), and IceProdGridSilent's threshold
GRID_LATE = 600
GRID_SILENT = 3600
#: dataset metadata joined onto a per-dataset result; topk keeps one series per dataset even
#: while two replicas (or an old and a new shard) briefly disagree about the description
INFO_JOIN = (
    "* on (dataset) group_left (description, group, username)\n"
    "topk by (dataset) (1, iceprod_dataset_info)"
)


def overview() -> Json:
    """IceProd as a whole: what is running, how fast it completes and fails, what needs a look."""
    attention = (
        "(\n"
        "  (\n"
        '    sum by (dataset) (dataset:dataset_tasks:sum_by_status{status="failed"})\n'
        "    * on (dataset) group_left (status)\n"
        "    topk by (dataset) (1, max by (dataset, status) (iceprod_dataset_status) == 1)\n"
        "  )\n"
        "  and on (dataset)\n"
        "  (\n"
        '      (max by (dataset) (iceprod_dataset_status{status="errors"}) == 1)\n'
        "    or on (dataset)\n"
        "      (dataset:dataset_tasks_failed:ratio > 0.1)\n"
        "    or on (dataset)\n"
        "      (\n"
        "        (dataset:dataset_tasks_completed:deriv1h == 0)\n"
        "        and on (dataset) (sum by (dataset) "
        '(dataset:dataset_tasks:sum_by_status{status=~"idle|waiting|queued|processing"}) > 0)\n'
        f"        and on (dataset) ({PROCESSING})\n"
        "      )\n"
        "  )\n"
        ")\n"
        f"{INFO_JOIN}"
    )
    processing_only = f"and on (dataset) ({PROCESSING})"
    jobs_complete = one_copy('iceprod_dataset_jobs{status="complete"}')
    progress_columns = [
        Target(
            f"sum by (dataset) ({jobs_complete})\n"
            "/ on (dataset) (max by (dataset) (iceprod_dataset_jobs_submitted) > 0)\n"
            f"{processing_only}",
            instant=True,
            table=True,
        ),
        Target(
            f"dataset:dataset_tasks_completed:deriv1h * 3600\n{processing_only}",
            instant=True,
            table=True,
        ),
        Target(
            'sum by (dataset) (dataset:dataset_tasks:sum_by_status{status="failed"})\n'
            f"{processing_only}",
            instant=True,
            table=True,
        ),
        Target(
            "dataset:dataset_tasks_remaining:sum\n"
            "/ on (dataset) (dataset:dataset_tasks_completed:deriv1h > 0)\n"
            f"{processing_only}",
            instant=True,
            table=True,
        ),
        Target(
            f"max by (dataset, description, group, username) (iceprod_dataset_info)\n"
            f"{processing_only}",
            instant=True,
            table=True,
        ),
    ]
    rename = {
        "Value #A": "Jobs complete",
        "Value #B": "Tasks completed / h",
        "Value #C": "Failed tasks",
        "Value #D": "Time to completion",
    }
    items: list[Panel | Row] = [
        Row("IceProd now"),
        Panel(
            "stat",
            "IceProd API",
            "Whether the exporter's last poll could read IceProd's dataset list (iceprod_up). "
            "Details on the exporter dashboard.",
            [Target("min(iceprod_up)", "IceProd API")],
            width=4,
            height=5,
            defaults=up_mapping("unreachable", "reachable"),
        ),
        Panel(
            "stat",
            "Datasets by status",
            "Datasets in IceProd by status (iceprod_datasets).",
            [Target(f"sum by (status) ({one_copy('iceprod_datasets')})", "{{status}}")],
            width=8,
            height=5,
            defaults={"color": {"mode": "fixed", "fixedColor": "blue"}},
            overrides=[
                _colour("errors", "red"),
                _colour("suspended", "orange"),
                _colour("complete", "green"),
            ],
        ),
        Panel(
            "stat",
            "Tasks by status",
            "Tasks of all watched datasets by status (iceprod:dataset_tasks:sum_by_status).",
            [Target("iceprod:dataset_tasks:sum_by_status", "{{status}}")],
            width=12,
            height=5,
            defaults={"color": {"mode": "fixed", "fixedColor": "blue"}},
            overrides=[_colour("failed", "red"), _colour("complete", "green")],
        ),
        Row("Throughput"),
        Panel(
            "timeseries",
            "Tasks by status",
            "Tasks of all datasets by status over time.",
            [Target("iceprod:dataset_tasks:sum_by_status", "{{status}}")],
        ),
        Panel(
            "timeseries",
            "Jobs by status",
            "Materialized jobs of all datasets by status over time.",
            [Target("iceprod:dataset_jobs:sum_by_status", "{{status}}")],
        ),
        Panel(
            "timeseries",
            "Completion throughput",
            "Tasks completed per hour, from the slope of the complete counts over the last "
            "hour: IceProd-wide, and the five fastest datasets.",
            [
                Target("iceprod:dataset_tasks_completed:deriv1h * 3600", "all datasets"),
                Target("topk(5, dataset:dataset_tasks_completed:deriv1h * 3600)", "{{dataset}}"),
            ],
            unit="short",
            defaults={"min": 0},
        ),
        Panel(
            "timeseries",
            "Failure rate",
            "Tasks failing per hour (slope of the failed counts over the last hour; a reset of "
            "failed tasks reads as 0) and the share of finished tasks that are failed.",
            [
                Target("iceprod:dataset_tasks_failed:deriv1h * 3600", "failed tasks / h"),
                Target("iceprod:dataset_tasks_failed:ratio", "failed / finished"),
            ],
            defaults={"min": 0},
            overrides=[right_axis("byName", "failed / finished", "percentunit")],
        ),
        Row("Datasets"),
        Panel(
            "table",
            "Datasets needing attention",
            "Datasets in status errors; with more than 10% of finished tasks failed; or "
            "processing with tasks left but none completed in the last hour. The value is the "
            "number of failed tasks. Click a dataset to open it.",
            [Target(attention, instant=True, table=True)],
            width=24,
            height=8,
            overrides=[_link("dataset")],
            transformations=[
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True, "__name__": True},
                        "indexByName": {
                            "dataset": 0,
                            "status": 1,
                            "description": 2,
                            "group": 3,
                            "username": 4,
                            "Value": 5,
                        },
                        "renameByName": {"Value": "Failed tasks"},
                    },
                }
            ],
        ),
        Panel(
            "table",
            "Processing datasets",
            "Every processing dataset: share of jobs complete, tasks completed per hour over "
            "the last hour, failed tasks, and the estimated time to completion (tasks not yet "
            "complete / completion rate; empty when nothing completed in the last hour).",
            progress_columns,
            width=24,
            height=10,
            overrides=[
                _link("dataset"),
                _unit("Jobs complete", "percentunit"),
                _unit("Time to completion", "s"),
                _unit("Tasks completed / h", "short"),
            ],
            transformations=[
                {"id": "merge", "options": {}},
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True, "Value #E": True},
                        "indexByName": {"dataset": 0, "description": 1, "group": 2},
                        "renameByName": rename,
                    },
                },
                {
                    "id": "sortBy",
                    "options": {"sort": [{"field": "dataset", "desc": False}]},
                },
            ],
        ),
        Row("Grids"),
        Panel(
            "table",
            "Grids",
            "Grids (HTCondor submit sites) registered with IceProd, the longest silent first: "
            "host, IceProd version, and the time since the grid last reported (its daemon "
            "PATCHes last_update regularly). Orange after 10 minutes (several missed reports), "
            "red after 1 hour (IceProdGridSilent fires when that lasts 15 minutes more). From "
            "GET /grids, read by shard 0; empty when the exporter's token may not read /grids.",
            [
                Target(
                    "max by (grid, host, version) (iceprod_grid_info)", instant=True, table=True
                ),
                Target(
                    "time() - max by (grid) (iceprod_grid_last_update_timestamp_seconds)",
                    instant=True,
                    table=True,
                ),
            ],
            width=24,
            height=7,
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "Silent for"},
                    "properties": [
                        {"id": "unit", "value": "s"},
                        {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                        {
                            "id": "thresholds",
                            "value": thresholds(
                                (None, "green"), (GRID_LATE, "orange"), (GRID_SILENT, "red")
                            )["thresholds"],
                        },
                    ],
                }
            ],
            transformations=[
                {"id": "merge", "options": {}},
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True, "Value #A": True},
                        "indexByName": {"grid": 0, "host": 1, "version": 2, "Value #B": 3},
                        "renameByName": {"Value #B": "Silent for"},
                    },
                },
                {
                    "id": "sortBy",
                    "options": {"sort": [{"field": "Silent for", "desc": True}]},
                },
            ],
        ),
    ]
    return dashboard(
        OVERVIEW_UID,
        "IceProd overview",
        "IceProd as a whole: datasets and tasks by status, completion and failure throughput, "
        "and the datasets that need attention. Data: iceprod-exporter.",
        [],
        items,
    )


def _colour(name: str, colour: str) -> Json:
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": "color", "value": {"fixedColor": colour, "mode": "fixed"}}],
    }


def _link(field_name: str) -> Json:
    return {
        "matcher": {"id": "byName", "options": field_name},
        "properties": [{"id": "links", "value": [DATASET_LINK]}],
    }


def _unit(field_name: str, unit: str) -> Json:
    return {
        "matcher": {"id": "byName", "options": field_name},
        "properties": [{"id": "unit", "value": unit}],
    }


# ---------------------------------------------------------------------------- one dataset

D = 'dataset="$dataset"'
DT = 'dataset="$dataset", task_name=~"$task_name"'
COMPLETE = 'status="complete"'
FAILED = 'status="failed"'
TO_RUN = 'status=~"idle|waiting|queued|processing"'


def one(metric: str, *matchers: str) -> str:
    """One copy (see :func:`one_copy`) of ``metric{matchers}``."""
    return one_copy(f"{metric}{{{', '.join(matchers)}}}")


def dataset_board() -> Json:
    """One dataset: progress, status per task name, failures, walltime, time to completion."""
    rename_stats = {
        "Value #A": "mean",
        "Value #B": "std dev",
        "Value #C": "min",
        "Value #D": "max",
        "Value #E": "efficiency",
    }
    items: list[Panel | Row] = [
        Row("Dataset $dataset"),
        Panel(
            "stat",
            "Status",
            "The dataset's IceProd status.",
            [Target(f"max by (status) (iceprod_dataset_status{{{D}}}) == 1", "{{status}}")],
            width=4,
            height=4,
            options={"textMode": "name", "colorMode": "background"},
            defaults={"color": {"mode": "fixed", "fixedColor": "blue"}},
            overrides=[
                _colour("errors", "red"),
                _colour("suspended", "orange"),
                _colour("complete", "green"),
            ],
        ),
        Panel(
            "stat",
            "Description",
            "Description, group and submitting user (iceprod_dataset_info).",
            [
                Target(
                    f"topk(1, iceprod_dataset_info{{{D}}})",
                    "{{description}} ({{group}}, {{username}})",
                )
            ],
            width=8,
            height=4,
            options={"textMode": "name", "colorMode": "none"},
        ),
        Panel(
            "stat",
            "Submitted",
            "When the dataset was submitted.",
            [Target(f"max(iceprod_dataset_start_timestamp_seconds{{{D}}}) * 1000", "submitted")],
            width=4,
            height=4,
            unit="dateTimeFromNow",
            options={"colorMode": "none"},
        ),
        Panel(
            "stat",
            "Counts read",
            "When the job and task counts were last read: every poll while they change, every "
            "quiet_poll_interval (5 min) once they are quiet.",
            [
                Target(
                    f"max(iceprod_dataset_counted_timestamp_seconds{{{D}}}) * 1000",
                    "counts read",
                )
            ],
            width=4,
            height=4,
            unit="dateTimeFromNow",
            options={"colorMode": "none"},
        ),
        Panel(
            "stat",
            "Priority",
            "Dataset priority in IceProd.",
            [Target(f"max(iceprod_dataset_priority{{{D}}})", "priority")],
            width=4,
            height=4,
            options={"colorMode": "none"},
        ),
        Panel(
            "stat",
            "Jobs not materialized",
            "Jobs submitted but not yet created by IceProd's materialization "
            "(jobs_submitted minus materialized jobs).",
            [
                Target(
                    f"max(iceprod_dataset_jobs_submitted{{{D}}})\n"
                    f"- sum({one('iceprod_dataset_jobs', D)})",
                    "not materialized",
                )
            ],
            width=4,
            height=4,
            options={"colorMode": "none"},
        ),
        Panel(
            "stat",
            "Truncated",
            "A truncated dataset gets no further jobs materialized.",
            [Target(f"max(iceprod_dataset_truncated{{{D}}})", "truncated")],
            width=4,
            height=6,
            options={"colorMode": "none"},
            defaults={
                "mappings": [
                    {
                        "type": "value",
                        "options": {
                            "0": {"index": 0, "text": "no"},
                            "1": {"index": 1, "text": "yes"},
                        },
                    }
                ]
            },
        ),
        Panel(
            "gauge",
            "Jobs complete",
            "Complete jobs over jobs submitted.",
            [
                Target(
                    f"sum({one('iceprod_dataset_jobs', D, COMPLETE)})\n"
                    f"/ (max(iceprod_dataset_jobs_submitted{{{D}}}) > 0)",
                    "jobs",
                )
            ],
            width=5,
            height=6,
            unit="percentunit",
            defaults={"min": 0, "max": 1, **thresholds((None, "blue"), (1, "green"))},
        ),
        Panel(
            "gauge",
            "Tasks complete",
            "Complete tasks over tasks submitted.",
            [
                Target(
                    f"sum({one('iceprod_dataset_tasks', D, COMPLETE)})\n"
                    f"/ (max(iceprod_dataset_tasks_submitted{{{D}}}) > 0)",
                    "tasks",
                )
            ],
            width=5,
            height=6,
            unit="percentunit",
            defaults={"min": 0, "max": 1, **thresholds((None, "blue"), (1, "green"))},
        ),
        Panel(
            "stat",
            "Estimated time to completion",
            "Tasks not yet complete (including those of jobs not materialized) divided by the "
            "completion rate of the last hour. Empty when no task completed in the last hour.",
            [
                Target(
                    f"dataset:dataset_tasks_remaining:sum{{{D}}}\n"
                    f"/ (dataset:dataset_tasks_completed:deriv1h{{{D}}} > 0)",
                    "time to completion",
                )
            ],
            width=5,
            height=6,
            unit="s",
            options={"colorMode": "none"},
            defaults={"noValue": "not progressing"},
        ),
        Panel(
            "stat",
            "Tasks completed per hour",
            "Completion rate over the last hour, and the tasks not yet complete.",
            [
                Target(f"dataset:dataset_tasks_completed:deriv1h{{{D}}} * 3600", "per hour"),
                Target(f"dataset:dataset_tasks_remaining:sum{{{D}}}", "remaining"),
            ],
            width=5,
            height=6,
            options={"colorMode": "none", "textMode": "value_and_name"},
        ),
        Row("Status ($task_name)"),
        Panel(
            "timeseries",
            "Tasks by status",
            "Tasks of the selected task names by status.",
            [Target(f"sum by (status) ({one('iceprod_dataset_tasks', DT)})", "{{status}}")],
        ),
        Panel(
            "timeseries",
            "Jobs by status",
            "Materialized jobs by status.",
            [Target(f"sum by (status) ({one('iceprod_dataset_jobs', D)})", "{{status}}")],
        ),
        Panel(
            "table",
            "Tasks per task name and status",
            "Current task counts: one row per task name, one column per status.",
            [
                Target(
                    f"sum by (task_name, status) ({one('iceprod_dataset_tasks', DT)})",
                    instant=True,
                    table=True,
                )
            ],
            width=24,
            height=7,
            transformations=[
                {
                    "id": "groupingToMatrix",
                    "options": {
                        "columnField": "status",
                        "rowField": "task_name",
                        "valueField": "Value",
                    },
                },
                {
                    "id": "organize",
                    "options": {
                        "indexByName": {
                            "task_name\\status": 0,
                            "idle": 1,
                            "waiting": 2,
                            "queued": 3,
                            "processing": 4,
                            "suspended": 5,
                            "failed": 6,
                            "complete": 7,
                        },
                        "renameByName": {"task_name\\status": "task name"},
                    },
                },
            ],
        ),
        Row("Throughput and failures ($task_name)"),
        Panel(
            "timeseries",
            "Completed tasks per hour",
            "Per task name: slope of the complete count over the last hour.",
            [
                Target(
                    f"sum by (task_name) (max without ({REPLICA_LABELS}) (clamp_min(deriv(\n"
                    f'  iceprod_dataset_tasks{{{DT}, status="complete"}}[1h]\n'
                    "), 0))) * 3600",
                    "{{task_name}}",
                )
            ],
            width=8,
            defaults={"min": 0},
        ),
        Panel(
            "timeseries",
            "Failed tasks",
            "Tasks in status failed (a failed task has used up its retries).",
            [
                Target(
                    f"sum by (task_name) ({one('iceprod_dataset_tasks', DT, FAILED)})",
                    "{{task_name}}",
                )
            ],
            width=8,
        ),
        Panel(
            "timeseries",
            "Failed share of finished tasks",
            "failed / (failed + complete) per task name.",
            [
                Target(
                    f"sum by (task_name) ({one('iceprod_dataset_tasks', DT, FAILED)})\n"
                    "/ (sum by (task_name) "
                    f"""({one("iceprod_dataset_tasks", DT, 'status=~"failed|complete"')}) > 0)""",
                    "{{task_name}}",
                )
            ],
            width=8,
            unit="percentunit",
            defaults={"min": 0, "max": 1},
        ),
        Row("Walltime and efficiency ($task_name)"),
        Panel(
            "timeseries",
            "Mean walltime",
            "Mean walltime of complete tasks per task name (from task_stats, refreshed every "
            "task_stats_interval).",
            [
                Target(
                    f"max by (task_name) (iceprod_dataset_task_walltime_mean_seconds{{{DT}}})",
                    "{{task_name}}",
                )
            ],
            width=8,
            unit="s",
        ),
        Panel(
            "timeseries",
            "Efficiency",
            "Good walltime over all walltime of complete tasks (time lost to failed attempts "
            "lowers it).",
            [
                Target(
                    f"max by (task_name) (iceprod_dataset_task_efficiency_ratio{{{DT}}})",
                    "{{task_name}}",
                )
            ],
            width=8,
            unit="percentunit",
            defaults={"min": 0, "max": 1},
        ),
        Panel(
            "timeseries",
            "Walltime used",
            "Walltime of complete tasks, and walltime lost to failed attempts of those tasks.",
            [
                Target(
                    f"sum({one('iceprod_dataset_task_walltime_complete_seconds', DT)})",
                    "complete",
                ),
                Target(
                    f"sum({one('iceprod_dataset_task_walltime_error_seconds', DT)})",
                    "lost to failures",
                ),
            ],
            width=8,
            unit="s",
        ),
        Panel(
            "table",
            "Walltime per task name",
            "Walltime statistics of complete tasks.",
            [
                Target(f"max by (task_name) ({metric}{{{DT}}})", instant=True, table=True)
                for metric in (
                    "iceprod_dataset_task_walltime_mean_seconds",
                    "iceprod_dataset_task_walltime_stddev_seconds",
                    "iceprod_dataset_task_walltime_min_seconds",
                    "iceprod_dataset_task_walltime_max_seconds",
                    "iceprod_dataset_task_efficiency_ratio",
                )
            ],
            width=16,
            height=7,
            unit="s",
            overrides=[_unit("efficiency", "percentunit")],
            transformations=[
                {"id": "merge", "options": {}},
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {
                            "Time": True,
                            "dataset": True,
                            "instance": True,
                            "job": True,
                        },
                        "indexByName": {"task_name": 0},
                        "renameByName": {**rename_stats, "task_name": "task name"},
                    },
                },
            ],
        ),
        Panel(
            "stat",
            "Walltime still to run",
            "Estimate: tasks idle, waiting, queued or processing times the mean walltime of "
            "their task name (jobs not yet materialized are not included).",
            [
                Target(
                    "sum(\n"
                    f"  sum by (dataset, task_name) ({one('iceprod_dataset_tasks', DT, TO_RUN)})\n"
                    "  * on (dataset, task_name)\n"
                    f"  max by (dataset, task_name) (iceprod_dataset_task_walltime_mean_seconds"
                    f"{{{DT}}})\n"
                    ")",
                    "walltime to run",
                )
            ],
            width=8,
            height=7,
            unit="s",
            options={"colorMode": "none"},
        ),
    ]
    return dashboard(
        DATASET_UID,
        "IceProd dataset",
        "One IceProd dataset: progress, status per task name, failures, walltime and "
        "efficiency, and an estimated time to completion.",
        [
            query_variable(
                "dataset", "Dataset", "label_values(iceprod_dataset_info, dataset)", numeric=True
            ),
            query_variable(
                "task_name",
                "Task name",
                'label_values(iceprod_dataset_tasks{dataset="$dataset"}, task_name)',
                multi=True,
            ),
        ],
        items,
    )


# ---------------------------------------------------------------------------- the exporter

E = 'job="iceprod-exporter", instance=~"$instance"'
I_ = 'instance=~"$instance"'


def exporter_board() -> Json:
    """The exporter's health: scrape, polls, API requests, token."""
    items: list[Panel | Row] = [
        Row("Health"),
        Panel(
            "stat",
            "Exporter scraped",
            'Prometheus can scrape the exporter (up{job="iceprod-exporter"}).',
            [Target(f"up{{{E}}}", "{{instance}}")],
            width=4,
            height=5,
            defaults=up_mapping(),
        ),
        Panel(
            "stat",
            "IceProd API",
            "The last poll could read IceProd's dataset list (iceprod_up).",
            [Target(f"iceprod_up{{{I_}}}", "{{instance}}")],
            width=4,
            height=5,
            defaults=up_mapping("unreachable", "reachable"),
        ),
        Panel(
            "stat",
            "Data age",
            "Seconds since the last successful poll "
            "(time() - iceprod_exporter_last_successful_poll_timestamp_seconds).",
            [
                Target(
                    f"time() - iceprod_exporter_last_successful_poll_timestamp_seconds{{{I_}}}",
                    "{{instance}}",
                )
            ],
            width=4,
            height=5,
            unit="s",
            defaults=thresholds((None, "green"), (180, "orange"), (600, "red")),
        ),
        Panel(
            "stat",
            "Datasets watched",
            "Per exporter instance: datasets whose counts it polls, and datasets whose routes "
            "answer 403 to its token. Shards split the datasets between them; HA replicas each "
            "watch the same ones.",
            [
                Target(
                    f"sum by (instance) (iceprod_exporter_datasets_watched{{{I_}}})",
                    "watched {{instance}}",
                ),
                Target(
                    f"sum by (instance) (iceprod_exporter_forbidden_datasets{{{I_}}})",
                    "forbidden {{instance}}",
                ),
            ],
            width=6,
            height=5,
            options={"textMode": "value_and_name", "colorMode": "none"},
        ),
        Panel(
            "stat",
            "Token expires in",
            "Time until the access token expires (empty for a static token without expiry).",
            [
                Target(
                    f"(iceprod_exporter_token_expiry_timestamp_seconds{{{I_}}} > 0) - time()",
                    "{{instance}}",
                )
            ],
            width=6,
            height=5,
            unit="s",
            defaults={
                "noValue": "unknown",
                **thresholds((None, "red"), (0, "orange"), (60, "green")),
            },
        ),
        Panel(
            "timeseries",
            "Staleness",
            "Seconds since the last successful poll; the exporter drops dataset values once "
            "this passes max_staleness, and IceProdExporterMetricsStale fires above 600 s.",
            [
                Target(
                    f"time() - iceprod_exporter_last_successful_poll_timestamp_seconds{{{I_}}}",
                    "{{instance}}",
                )
            ],
            unit="s",
        ),
        Panel(
            "timeseries",
            "Poll duration",
            "Per exporter instance (a slow shard or replica stands out): duration of poll "
            "cycles (quantiles from iceprod_exporter_poll_duration_seconds) and failed polls "
            "per minute.",
            [
                Target(
                    "histogram_quantile(0.5, sum by (instance, le) "
                    f"(rate(iceprod_exporter_poll_duration_seconds_bucket{{{I_}}}"
                    "[$__rate_interval])))",
                    "p50 {{instance}}",
                ),
                Target(
                    "histogram_quantile(0.95, sum by (instance, le) "
                    f"(rate(iceprod_exporter_poll_duration_seconds_bucket{{{I_}}}"
                    "[$__rate_interval])))",
                    "p95 {{instance}}",
                ),
                Target(
                    f"sum by (instance) (rate(iceprod_exporter_poll_duration_seconds_sum{{{I_}}}"
                    "[$__rate_interval]))\n"
                    "/ sum by (instance) "
                    f"(rate(iceprod_exporter_poll_duration_seconds_count{{{I_}}}"
                    "[$__rate_interval]))",
                    "mean {{instance}}",
                ),
                Target(
                    f"sum by (instance) (rate(iceprod_exporter_poll_failures_total{{{I_}}}"
                    "[$__rate_interval])) * 60",
                    "failed polls / min {{instance}}",
                ),
            ],
            unit="s",
            overrides=[right_axis("byRegexp", "^failed polls / min", "short")],
        ),
        Row("IceProd API requests"),
        Panel(
            "timeseries",
            "Requests by endpoint",
            "IceProd API requests per second by endpoint template (retries included).",
            [
                Target(
                    "sum by (endpoint) "
                    f"(rate(iceprod_exporter_api_requests_total{{{I_}}}[$__rate_interval]))",
                    "{{endpoint}}",
                )
            ],
            width=8,
            unit="reqps",
        ),
        Panel(
            "timeseries",
            "Errors by endpoint and reason",
            "Failed requests per second. Reasons: timeout, connection, unauthorized (401), "
            "forbidden (403), not_found, overloaded (503/429), server_error (other 5xx), "
            "client_error (other 4xx), bad_response (not the JSON expected), token (no token).",
            [
                Target(
                    "sum by (endpoint, reason) "
                    f"(rate(iceprod_exporter_api_request_failures_total{{{I_}}}"
                    "[$__rate_interval]))",
                    "{{endpoint}} {{reason}}",
                )
            ],
            width=8,
            unit="reqps",
        ),
        Panel(
            "timeseries",
            "Error ratio by endpoint",
            "Failed over all requests, per endpoint template.",
            [
                Target(
                    "sum by (endpoint) "
                    f"(rate(iceprod_exporter_api_request_failures_total{{{I_}}}"
                    "[$__rate_interval]))\n"
                    "/ sum by (endpoint) "
                    f"(rate(iceprod_exporter_api_requests_total{{{I_}}}[$__rate_interval]))",
                    "{{endpoint}}",
                )
            ],
            width=8,
            unit="percentunit",
            defaults={"min": 0},
        ),
        Panel(
            "timeseries",
            "Latency by endpoint (p95)",
            "95th percentile of request latency per endpoint template.",
            [
                Target(
                    "histogram_quantile(0.95, sum by (endpoint, le) "
                    f"(rate(iceprod_exporter_api_request_duration_seconds_bucket{{{I_}}}"
                    "[$__rate_interval])))",
                    "{{endpoint}}",
                )
            ],
            width=8,
            unit="s",
        ),
        Panel(
            "timeseries",
            "Latency by endpoint (mean)",
            "Mean request latency per endpoint template.",
            [
                Target(
                    "sum by (endpoint) "
                    f"(rate(iceprod_exporter_api_request_duration_seconds_sum{{{I_}}}"
                    "[$__rate_interval]))\n"
                    "/ sum by (endpoint) "
                    f"(rate(iceprod_exporter_api_request_duration_seconds_count{{{I_}}}"
                    "[$__rate_interval]))",
                    "{{endpoint}}",
                )
            ],
            width=8,
            unit="s",
        ),
        Panel(
            "timeseries",
            "Requests in flight",
            "Requests in flight or waiting for the rate limiter.",
            [
                Target(
                    f"sum by (instance) (iceprod_exporter_api_requests_in_flight{{{I_}}})",
                    "{{instance}}",
                )
            ],
            width=8,
        ),
        Panel(
            "timeseries",
            "Permission denied by endpoint",
            "403 answers in the last poll, by endpoint template and exporter instance: routes "
            "the token may not read. A permission problem, not an outage: /grids needs the "
            "iceprod-system role (or admin group), per-dataset routes need read access to the "
            "dataset. IceProdExporterPermissionDenied fires when a route keeps answering 403 "
            "for 30 minutes.",
            [
                Target(
                    f"max by (instance, endpoint) (iceprod_exporter_permission_denied{{{I_}}})",
                    "{{endpoint}} {{instance}}",
                )
            ],
            width=16,
            defaults={"min": 0, "decimals": 0},
        ),
        Panel(
            "timeseries",
            "Dropped values and crashed polls",
            "Values in IceProd's answers the exposition cannot carry (out of range, not finite, "
            "not UTF-8, duplicate dataset numbers), dropped by field: the rest of the dataset is "
            "still exported. Crashed polls are exporter bugs (log event poll.crashed); each is "
            "also a failed poll.",
            [
                Target(
                    "sum by (field) "
                    f"(increase(iceprod_exporter_bad_values_total{{{I_}}}[$__rate_interval]))",
                    "dropped: {{field}}",
                ),
                Target(
                    f"sum by (instance) (increase(iceprod_exporter_poll_crashes_total{{{I_}}}"
                    "[$__rate_interval]))",
                    "crashed polls {{instance}}",
                ),
            ],
            defaults={"min": 0},
        ),
        Panel(
            "timeseries",
            "HTTP requests and refused logins",
            "Requests the exporter's HTTP server answered, by handler and status code, and "
            "requests refused for missing or wrong basic-auth credentials (401). A steady "
            "stream of 401s is a scraper with a stale password.",
            [
                Target(
                    "sum by (handler, code) "
                    f"(rate(iceprod_exporter_http_requests_total{{{I_}}}[$__rate_interval]))",
                    "{{handler}} {{code}}",
                ),
                Target(
                    f"sum by (instance) (rate(iceprod_exporter_http_auth_failures_total{{{I_}}}"
                    "[$__rate_interval]))",
                    "refused logins {{instance}}",
                ),
            ],
            unit="reqps",
            defaults={"min": 0},
        ),
        Row("Token"),
        Panel(
            "timeseries",
            "Token refreshes and failures",
            "Token acquisitions and failed attempts by reason (timeout, connection, rejected, "
            "bad_response, config), per interval.",
            [
                Target(
                    f"sum(increase(iceprod_exporter_token_refreshes_total{{{I_}}}"
                    "[$__rate_interval]))",
                    "refreshed",
                ),
                Target(
                    "sum by (reason) "
                    f"(increase(iceprod_exporter_token_refresh_failures_total{{{I_}}}"
                    "[$__rate_interval]))",
                    "failed: {{reason}}",
                ),
            ],
            defaults={"min": 0},
        ),
        Panel(
            "timeseries",
            "Token lifetime left",
            "Seconds until the current access token expires; it should be renewed well before 0.",
            [
                Target(
                    f"(iceprod_exporter_token_expiry_timestamp_seconds{{{I_}}} > 0) - time()",
                    "{{instance}}",
                )
            ],
            unit="s",
        ),
        Row("Build"),
        Panel(
            "table",
            "Exporter build",
            "Version of every exporter instance.",
            [
                Target(
                    f"iceprod_exporter_build_info{{{I_}}}",
                    instant=True,
                    table=True,
                )
            ],
            width=24,
            height=5,
            transformations=[
                {
                    "id": "organize",
                    "options": {"excludeByName": {"Time": True, "Value": True, "__name__": True}},
                }
            ],
        ),
    ]
    return dashboard(
        EXPORTER_UID,
        "IceProd exporter",
        "Health of iceprod-exporter: scrapes, polls, staleness, IceProd API requests, errors "
        "and latency by endpoint, token expiry and refresh failures.",
        [
            query_variable(
                "instance",
                "Exporter",
                'label_values(up{job="iceprod-exporter"}, instance)',
                multi=True,
            )
        ],
        items,
    )


# ---------------------------------------------------------------------------- main

DASHBOARDS = {
    "iceprod-overview.json": overview,
    "iceprod-dataset.json": dataset_board,
    "iceprod-exporter.json": exporter_board,
}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {
        name: json.dumps(build(), indent=2, sort_keys=True) + "\n"
        for name, build in DASHBOARDS.items()
    }


def main(argv: Sequence[str]) -> int:
    """Write the dashboards (or, with --check, fail when the files differ)."""
    check = "--check" in argv
    stale = []
    for name, text in render().items():
        path = OUT / name
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(name)
        if not check:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    for name in stale:
        print(f"{'stale' if check else 'wrote'}: {OUT / name}", file=sys.stderr)
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
