"""Structure of the Grafana dashboards, and every query checked against the metric contract.

The dashboards are built by the monitoring mixin (grafana/mixin/) on grafana-foundation-sdk;
the committed JSON must be what it generates (tests/integration/mixin/test_dashboards.py, and
make drift). The end-to-end test (test_monitoring_e2e.py) runs
the same queries against a real Prometheus; these checks need no server and point at the exact
panel that drifted. Queries are parsed with promql-parser after Grafana's variables are filled in.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder

from grafana.mixin import alerts, config, generate
from grafana.mixin.dashboards import overview
from grafana.mixin.rules import Alert
from iceprod_exporter.exposition.metrics import SPECS, Group, Stability
from tests.support.dashboards import UIDS
from tests.support.monitoring import (
    BUILTIN_VARIABLES,
    DASHBOARD_DIR,
    PROMETHEUS_DIR,
    ROOT,
    check_expression,
    known_metrics,
    load_dashboards,
    load_rules,
    panels,
    replica_problems,
    scan,
    substitute,
    targets,
    variable_promql,
    variable_query,
)

DS = {"type": "prometheus", "uid": "${datasource}"}
#: values for the dashboards' own variables in the static checks ("All" for multi-values)
VALUES = {
    "dataset": "20001",
    "task_name": "generate",
    "instance": ".*",
    "group": ".*",
    "username": ".*",
    "datasource": "x",
}
PROVISIONING = ROOT / "grafana" / "provisioning"
#: the owner filter of the dataset panels, as the dashboards write it
OWNER_FILTER = ('group=~"$group"', 'username=~"$username"')


DASHBOARDS = load_dashboards()


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """Every (path, key, value) in a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{path}[{index}]")


def test_the_three_dashboards_are_shipped_with_stable_unique_uids() -> None:
    assert {name: d["uid"] for name, d in DASHBOARDS.items()} == UIDS


def test_generate_check_fails_on_drift_and_writing_fixes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert generate.main(["--check", "--root", str(tmp_path)]) == 1, "nothing written yet"
    assert generate.main(["--root", str(tmp_path)]) == 0
    assert generate.main(["--check", "--root", str(tmp_path)]) == 0
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.*"))
    assert written == sorted(
        p.relative_to(tmp_path).as_posix() for p in generate.outputs(root=tmp_path)
    )
    board = tmp_path / "grafana" / "dashboards" / "iceprod-overview.json"
    board.write_text(board.read_text().replace("IceProd overview", "hand edit"))
    capsys.readouterr()
    assert generate.main(["--check", "--root", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert "hand edit" in out and "out of date: grafana/dashboards/iceprod-overview.json" in err
    assert "make generate" in err
    assert generate.main(["--root", str(tmp_path)]) == 0
    assert generate.main(["--check", "--root", str(tmp_path)]) == 0


@pytest.mark.parametrize("name", sorted(UIDS))
def test_dashboard_metadata(name: str) -> None:
    dashboard = DASHBOARDS[name]
    assert dashboard["schemaVersion"] >= 39
    assert dashboard.get("id") is None, "an exported database id would clash on import"
    assert dashboard["title"].startswith("IceProd")
    assert "iceprod" in dashboard["tags"]
    assert dashboard["description"]


@pytest.mark.parametrize("name", sorted(UIDS))
def test_datasource_is_always_the_variable(name: str) -> None:
    dashboard = DASHBOARDS[name]
    variables = dashboard["templating"]["list"]
    datasource = variables[0]
    assert datasource["name"] == "datasource"
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"
    for path, key, value in _walk(dashboard):
        if key == "datasource" and path != "/templating/list[0]":
            assert value == DS, f"{name}{path}: datasource {value!r}"
        if isinstance(value, str) and key not in ("expr", "description", "definition", "query"):
            # a datasource uid pasted into a link, legend or option
            assert not re.search(r"datasource[^$]*uid", value), f"{name}{path}/{key}"


@pytest.mark.parametrize("name", sorted(UIDS))
def test_panels_have_ids_places_and_queries(name: str) -> None:
    dashboard = DASHBOARDS[name]
    all_panels = list(panels(dashboard))
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {name}"
    occupied: dict[tuple[int, int], str] = {}
    for panel in all_panels:
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= set(grid), panel["title"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in occupied, f"{panel['title']} overlaps {occupied[(x, y)]}"
                occupied[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["description"], panel
        assert panel["targets"], f"{panel['title']} has no query"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]


def test_required_variables() -> None:
    def variables(name: str) -> dict[str, dict[str, Any]]:
        return {v["name"]: v for v in DASHBOARDS[name]["templating"]["list"]}

    dataset = variables("iceprod-dataset.json")
    assert list(dataset) == ["datasource", "group", "username", "dataset", "task_name"]
    dataset_query, dataset_label = variable_promql(variable_query(dataset["dataset"]))
    assert dataset_label == "dataset"
    assert scan(dataset_query).selectors[0].name == "iceprod_dataset_info"
    assert all(f in dataset_query for f in OWNER_FILTER), "$dataset lists the owners' datasets"
    task_query, task_label = variable_promql(variable_query(dataset["task_name"]))
    assert task_label == "task_name"
    assert '"$dataset"' in task_query
    assert dataset["task_name"]["multi"] and dataset["task_name"]["includeAll"]
    assert dataset["task_name"]["allValue"] == ".*"
    row = ""
    for panel in panels(DASHBOARDS["iceprod-dataset.json"]):
        if panel["type"] == "row":
            row = panel["title"]
            continue
        for target in panel["targets"]:
            assert '"$dataset"' in target["expr"], f"{panel['title']} ignores $dataset"
            # the rows named after $task_name show the selected task names only
            if "$task_name" in row and "iceprod_dataset_task" in target["expr"]:
                assert 'task_name=~"$task_name"' in target["expr"], panel["title"]
    assert list(variables("iceprod-overview.json")) == ["datasource", "group", "username"]


@pytest.mark.parametrize("name", ["iceprod-overview.json", "iceprod-dataset.json"])
def test_group_and_user_variables_list_the_owners(name: str) -> None:
    variables = {v["name"]: v for v in DASHBOARDS[name]["templating"]["list"]}
    group_query, group_label = variable_promql(variable_query(variables["group"]))
    user_query, user_label = variable_promql(variable_query(variables["username"]))
    assert (group_query, group_label) == ("iceprod_dataset_info", "group")
    assert user_label == "username" and OWNER_FILTER[0] in user_query, "users of $group"
    for variable in (variables["group"], variables["username"]):
        assert variable["multi"] and variable["includeAll"] and variable["allValue"] == ".*"


def test_overview_dataset_panels_follow_the_owner_variables() -> None:
    """An IceProd group or a user sees their own datasets; IceProd-wide panels stay whole."""
    row = ""
    filtered = 0
    for panel in panels(DASHBOARDS["iceprod-overview.json"]):
        if panel["type"] == "row":
            row = panel["title"]
            continue
        for target in panel["targets"]:
            lists_datasets = row.startswith("Datasets") or target["legendFormat"] == "{{dataset}}"
            if lists_datasets:
                assert all(f in target["expr"] for f in OWNER_FILTER), panel["title"]
                filtered += 1
            else:
                assert "$group" not in target["expr"], panel["title"]
    assert filtered >= 7


@pytest.mark.parametrize("name", sorted(UIDS))
def test_every_variable_used_is_defined(name: str) -> None:
    dashboard = DASHBOARDS[name]
    defined = {v["name"] for v in dashboard["templating"]["list"]} | set(BUILTIN_VARIABLES)
    for panel, target in targets(dashboard):
        used = set(re.findall(r"\$\{?(\w+)", target["expr"]))
        assert used <= defined, f"{panel['title']}: undefined {used - defined}"


@pytest.mark.parametrize("name", sorted(UIDS))
def test_every_query_uses_only_metrics_and_labels_of_the_contract(name: str) -> None:
    known = known_metrics()
    dashboard = DASHBOARDS[name]
    problems = [
        f"{panel['title']} [{target['refId']}]: {problem}"
        for panel, target in targets(dashboard)
        for problem in check_expression(substitute(target["expr"], VALUES), known)
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            expr, label = variable_promql(substitute(variable_query(variable), VALUES))
            problems += check_expression(expr, known)
            mentioned = {s.name for s in scan(expr).selectors}
            assert label is None or all(label in known[m].labels for m in mentioned)
    assert problems == []


@pytest.mark.parametrize("name", sorted(UIDS))
def test_every_query_counts_each_replica_once(name: str) -> None:
    """HA and sharding: raw IceProd series are reduced to one copy before they are summed."""
    problems = [
        f"{panel['title']} [{target['refId']}]: {problem}"
        for panel, target in targets(DASHBOARDS[name])
        for problem in replica_problems(substitute(target["expr"], VALUES))
    ]
    assert problems == [], "wrap the series in one_copy() (max without (instance, pod))"


@pytest.mark.parametrize(
    ("expr", "double_counts"),
    [
        ("sum by (status) (iceprod_dataset_tasks)", True),
        ("sum by (status) (max without (instance) (iceprod_dataset_tasks))", True),
        ('iceprod_dataset_info{dataset="1"}', True),
        ("max by (instance, dataset) (iceprod_dataset_jobs)", True),
        ("max(sum by (dataset) (iceprod_dataset_jobs))", True),
        ("sum(clamp_min(deriv(iceprod_dataset_tasks[1h]), 0))", True),
        ("sum by (status) (max without (instance, pod) (iceprod_dataset_tasks))", False),
        (
            "sum(max without (instance, pod) (clamp_min(deriv(iceprod_dataset_tasks[1h]), 0)))",
            False,
        ),
        ("x * on (dataset) group_left (group) topk by (dataset) (1, iceprod_dataset_info)", False),
        ("max by (dataset) (iceprod_dataset_status) == 1", False),
        # the exporter's own metrics are per replica on purpose
        ("min(iceprod_up)", False),
        ("sum(rate(iceprod_exporter_api_requests_total[5m]))", False),
    ],
)
def test_the_replica_check_catches_double_counting(expr: str, double_counts: bool) -> None:
    assert bool(replica_problems(expr)) is double_counts, replica_problems(expr)


def test_exporter_health_stays_per_instance() -> None:
    """One slow or failing replica (or shard) must stand out, not be averaged away."""
    per_instance = (
        "iceprod_up",
        "iceprod_exporter_last_successful_poll_timestamp_seconds",
        "iceprod_exporter_poll_duration_seconds",
        "iceprod_exporter_poll_failures_total",
        "iceprod_exporter_datasets_watched",
        "iceprod_exporter_forbidden_datasets",
        "iceprod_exporter_permission_denied",
    )
    checked = 0
    for panel, target in targets(DASHBOARDS["iceprod-exporter.json"]):
        if not any(metric in target["expr"] for metric in per_instance):
            continue
        checked += 1
        scanned = scan(substitute(target["expr"], VALUES))
        where = f"{panel['title']} [{target['refId']}]"
        assert "{{instance}}" in target["legendFormat"], where
        assert not scanned.aggregations or "instance" in scanned.by_labels, where
    assert checked >= 10


def _panel(dashboard: dict[str, Any], title: str) -> dict[str, Any]:
    (panel,) = [p for p in panels(dashboard) if p["title"] == title]
    return panel


def _exprs(panel: dict[str, Any]) -> list[str]:
    return [t["expr"] for t in panel["targets"]]


def test_grid_panels_read_the_grid_daemons_own_series() -> None:
    """In IceProd 3.x /grids is never written: grid health comes from the daemons' metrics."""
    overview_board = DASHBOARDS["iceprod-overview.json"]
    job = f'job="{config.DEFAULT.grid_job}"'
    table = _panel(overview_board, "Grid daemons")
    exprs = _exprs(table)
    assert exprs[0] == f"max by (instance) (up{{{job}}})"
    assert any(f'iceprod_info{{{job}, type="grid"}}' in e for e in exprs)
    assert any("iceprod_grid_tasks" in e for e in exprs)
    assert sum("iceprod_grid_queue_num" in e for e in exprs) == 2
    assert all(job in e and "by (instance" in e for e in exprs), exprs
    organize = {t["id"]: t["options"] for t in table["transformations"]}["organize"]
    assert organize["renameByName"]["Value #A"] == "Up"
    resets = _exprs(_panel(overview_board, "Resets and failures per site"))
    outcomes = [scan(substitute(e, VALUES)).selectors[0] for e in resets]
    assert [s.name for s in outcomes] == [
        "iceprod_grid_task_reset_count",
        "iceprod_grid_task_failure_count",
        "iceprod_grid_task_success_count",
    ]
    assert all(s.function == "rate" for s in outcomes)
    assert all(e.startswith("sum by (site, gpu) (") for e in resets)
    # nothing reads the dead /grids series any more
    for text in generate.rendered().values():
        assert "iceprod_grid_info" not in text and "last_update_timestamp" not in text


def test_backlog_panel_shows_both_kinds_and_names_the_alerts() -> None:
    panel = _panel(DASHBOARDS["iceprod-overview.json"], "Backlog by resource kind")
    assert _exprs(panel) == ["iceprod:active_tasks:sum_by_resource_status"]
    assert panel["targets"][0]["legendFormat"] == "{{resource}} {{status}}"
    assert "IceProdResourceStarved" in panel["description"]
    assert "IceProdTaskQueueingStalled" in panel["description"]


def test_progress_and_time_to_completion_share_the_recorded_series() -> None:
    """The dashboards and the alerts read one ETA and one progress, right for truncated sets."""
    dataset = DASHBOARDS["iceprod-dataset.json"]
    eta = "dataset:dataset_time_to_completion:seconds"
    assert _exprs(_panel(dataset, "Estimated time to completion")) == [
        f'{eta}{{dataset="$dataset"}}'
    ]
    assert _exprs(_panel(dataset, "Jobs complete")) == [
        'dataset:dataset_jobs_complete:ratio{dataset="$dataset"}'
    ]
    processing = _exprs(_panel(DASHBOARDS["iceprod-overview.json"], "Processing datasets"))
    assert processing[0].startswith("dataset:dataset_jobs_complete:ratio\n")
    assert processing[3].startswith(f"{eta}\n")
    readers = [r["alert"] for r in load_rules(PROMETHEUS_DIR / "alerts.yaml") if eta in str(r)]
    assert readers == ["IceProdDatasetTaskFailureRatioHigh"]
    # nothing divides by jobs_submitted or tasks_submitted directly any more
    for board in (dataset, DASHBOARDS["iceprod-overview.json"]):
        for _, target in targets(board):
            assert "/ (max(iceprod_dataset_jobs_submitted" not in target["expr"]
            assert "/ (max(iceprod_dataset_tasks_submitted" not in target["expr"]
            assert (
                "/ on (dataset) (max by (dataset) (iceprod_dataset_jobs_sub" not in (target["expr"])
            )


def test_failed_means_needs_a_person_everywhere() -> None:
    """IceProd 3.x has no retry budget: no panel or alert may say a failed task used one up."""
    texts = [
        json.dumps(DASHBOARDS[name]) for name in ("iceprod-overview.json", "iceprod-dataset.json")
    ]
    texts += [(PROMETHEUS_DIR / name).read_text() for name in ("alerts.yaml", "recording.yaml")]
    for text in texts:
        assert "retries" not in text and "lost to failed attempts" not in text
    failed = _panel(DASHBOARDS["iceprod-dataset.json"], "Failed tasks")
    assert "needs a person" in failed["description"]
    assert "reset the task to waiting" in failed["description"]


def test_a_threshold_lives_in_the_config_only() -> None:
    """One value moves the dashboard and the alert together: no copies to keep in step."""
    cfg = dataclasses.replace(
        config.DEFAULT, grid_job="grids", resource_starved_for="4h", failure_ratio=0.25
    )
    board = json.loads(json.dumps(overview.build(cfg), cls=JSONEncoder))
    assert _exprs(_panel(board, "Grid daemons"))[0] == 'max by (instance) (up{job="grids"})'
    backlog = _panel(board, "Backlog by resource kind")["description"]
    assert "for 4 hours fire IceProdResourceStarved" in backlog
    rules = {r.name: r for g in alerts.groups(cfg) for r in g.rules if isinstance(r, Alert)}
    assert rules["IceProdGridDown"].expr == 'up{job="grids"} == 0'
    assert rules["IceProdResourceStarved"].for_ == "4h"
    assert "for 4 hours" in rules["IceProdResourceStarved"].description
    assert "ratio > 0.25)" in rules["IceProdDatasetTaskFailureRatioHigh"].expr
    assert "threshold 25%" in rules["IceProdDatasetTaskFailureRatioHigh"].description
    (attention,) = [p for p in panels(board) if p["title"] == "Datasets needing attention"]
    assert "ratio > 0.25)" in attention["targets"][0]["expr"]


def test_every_recording_rule_and_exporter_metric_is_on_a_dashboard() -> None:
    """New metrics need a panel (or a rule); recorded series nobody reads are dead code."""
    names: set[str] = set()
    for dashboard in DASHBOARDS.values():
        for _, target in targets(dashboard):
            names |= {s.name for s in scan(substitute(target["expr"], VALUES)).selectors}
    for path in (PROMETHEUS_DIR / "alerts.yaml", PROMETHEUS_DIR / "recording.yaml"):
        for rule in load_rules(path):
            names |= {s.name for s in scan(rule["expr"]).selectors}
    missing = []
    for spec in SPECS:
        if spec.stability is Stability.DEPRECATED or spec.group is Group.COMPAT:
            continue
        series = (
            {spec.name + "_bucket", spec.name + "_sum", spec.name + "_count"}
            if spec.kind.value == "histogram"
            else {spec.name}
        )
        if not series & names:
            missing.append(spec.name)
    assert missing == [], "add a panel to grafana/mixin/dashboards/ for these metrics"
    unused = [
        rule["record"]
        for rule in load_rules(PROMETHEUS_DIR / "recording.yaml")
        if rule["record"] not in names
    ]
    assert unused == []


def test_exporter_dashboard_covers_health() -> None:
    exprs = " ".join(t["expr"] for _, t in targets(DASHBOARDS["iceprod-exporter.json"]))
    for needle in (
        'up{job="iceprod-exporter"',
        "iceprod_up",
        "time() - iceprod_exporter_last_successful_poll_timestamp_seconds",
        "iceprod_exporter_poll_duration_seconds_bucket",
        "iceprod_exporter_api_requests_total",
        "sum by (endpoint, reason) (rate(iceprod_exporter_api_request_failures_total",
        "sum by (endpoint, le) (rate(iceprod_exporter_api_request_duration_seconds_bucket",
        "iceprod_exporter_token_expiry_timestamp_seconds",
        "sum by (reason) (increase(iceprod_exporter_token_refresh_failures_total",
        "max by (instance, endpoint) (iceprod_exporter_permission_denied",
    ):
        assert needle in exprs, needle


def test_overview_and_dataset_dashboards_answer_their_questions() -> None:
    def titles(name: str) -> set[str]:
        return {p["title"] for p in panels(DASHBOARDS[name])}

    assert {
        "Datasets by status",
        "Tasks by status",
        "Completion throughput",
        "Failure rate",
        "Datasets needing attention",
        "Backlog by resource kind",
        "Grid daemons",
        "HTCondor jobs per site",
        "Resets and failures per site",
    } <= titles("iceprod-overview.json")
    assert {
        "Jobs complete",
        "Tasks complete",
        "Tasks per task name and status",
        "Failed tasks",
        "Mean walltime",
        "Efficiency",
        "Estimated time to completion",
        "Truncated / always active",
        "Submitted to HTCondor per hour",
        "HTCondor walltime by outcome",
        "HTCondor memory used and requested",
    } <= titles("iceprod-dataset.json")


def test_links_point_at_shipped_dashboards() -> None:
    uids = set(UIDS.values())
    for name, dashboard in DASHBOARDS.items():
        for path, key, value in _walk(dashboard):
            if key == "url" and isinstance(value, str):
                match = re.match(r"/d/([\w-]+)/", value)
                assert match and match.group(1) in uids, f"{name}{path}: {value}"


def test_provisioning_loads_the_dashboards_and_a_prometheus_datasource() -> None:
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())
    (prometheus,) = datasources["datasources"]
    assert prometheus["type"] == "prometheus" and prometheus["isDefault"] is True
    assert prometheus["jsonData"]["timeInterval"] == "30s"
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "iceprod.yaml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    documented = (ROOT / "grafana" / "README.md").read_text(encoding="utf-8")
    assert provider["options"]["path"] in documented


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("iceprod_dataset_task_count", "unknown metric"),
        ('sum by (taskname) (iceprod_dataset_tasks{dataset="1"})', "labels of no metric"),
        ('iceprod_dataset_jobs{task_name="x"}', "has no label 'task_name'"),
        ('iceprod_dataset_tasks{status="completed"}', "'completed' is not one of"),
        ('iceprod_exporter_api_request_failures_total{reason="403"}', "is not one of"),
        ("rate(iceprod_dataset_tasks[5m])", "rate() of iceprod_dataset_tasks, a gauge"),
        ("deriv(iceprod_exporter_api_requests_total[5m])", "a counter"),
        ("dataset:dataset_tasks_complete:sum", "unknown metric"),
        ("sum(iceprod_up", "cannot parse"),
        ("absent_over_tim(iceprod_up[5m])", "unknown function"),
        ("histogram_quantile(0.5, iceprod_up)", "not a _bucket"),
        # what reads differently on Prometheus 2 and 3
        ('iceprod_exporter_poll_duration_seconds_bucket{le="1"}', "floats on Prometheus 3"),
        ('iceprod_dataset_info{description=~"Level2.*"}', "newline on Prometheus 3"),
        ("holt_winters(iceprod_up[1h], 0.5, 0.5)", "unknown function"),
        ("double_exponential_smoothing(iceprod_up[1h], 0.5, 0.5)", "experimental"),
        ('{"iceprod.up"}', "quoted UTF-8 names"),
    ],
)
def test_the_query_checker_catches_drift(expr: str, problem: str) -> None:
    problems = check_expression(expr, known_metrics())
    assert any(problem in p for p in problems), problems


def test_substitution_covers_grafana_variable_forms() -> None:
    text = 'a{d="$dataset", t=~"${task_name}"}[$__rate_interval] [[dataset]] ${dataset:raw}'
    assert substitute(text, {"dataset": "7", "task_name": "x"}) == ('a{d="7", t=~"x"}[1m] 7 7')
    with pytest.raises(KeyError):
        substitute("$nope", {})


def test_dashboard_json_is_plain_json() -> None:
    for path in sorted(Path(DASHBOARD_DIR).glob("*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        assert isinstance(document, dict) and document["panels"], path.name
