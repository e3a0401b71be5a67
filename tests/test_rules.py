"""The Prometheus rules and configs in deploy/prometheus, checked with the real tools.

promtool and amtool come from Debian's prometheus and prometheus-alertmanager packages;
monitoring_support.tool() installs them when missing and fails (never skips) when it cannot.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from .monitoring_support import (
    DASHBOARD_DIR,
    EXPORTER_JOB,
    PROMETHEUS_DIR,
    REPLICA_LABELS,
    RULE_FILES,
    RULE_TEST_FILES,
    check_expression,
    known_metrics,
    load_dashboards,
    load_rules,
    replica_problems,
    run_tool,
    tool_version,
)

ALERTS = PROMETHEUS_DIR / "alerts.yaml"
RECORDING = PROMETHEUS_DIR / "recording.yaml"
REQUIRED_ALERTS = {
    "IceProdExporterDown",
    "IceProdAPIDown",
    "IceProdAPITokenRejected",
    "IceProdExporterMetricsStale",
    "IceProdExporterTokenRefreshFailing",
    "IceProdDatasetErrors",
    "IceProdDatasetStalled",
    "IceProdDatasetTaskFailureRatioHigh",
    "IceProdQueueStarved",
    "IceProdGridSilent",
    "IceProdExporterPermissionDenied",
}
#: the cases of recording-test.yaml that export one IceProd in three ways (see its header)
ONE_EXPORTER = "one exporter"
TWO_SHARDS = "two shards with disjoint datasets"
HA_SHARDS = "two shards, each as two identical replicas (HA)"
ROLLING_UPDATE = "a replica is replaced during a rolling update"
_LABEL_RE = re.compile(r'(\w+)="([^"]*)"')
SEVERITIES = {"critical", "warning"}


def _alerts() -> list[dict[str, Any]]:
    return [rule for rule in load_rules(ALERTS) if "alert" in rule]


def _records() -> list[dict[str, Any]]:
    return [rule for rule in load_rules(RECORDING) if "record" in rule]


def _unit_tests(path: Path) -> list[dict[str, Any]]:
    return list(yaml.safe_load(path.read_text(encoding="utf-8"))["tests"])


@pytest.mark.parametrize("name", ["promtool", "prometheus", "alertmanager", "amtool"])
@pytest.mark.integration
def test_tools_are_installed_and_recent(name: str) -> None:
    version = tool_version(name)
    assert re.match(r"\d+\.\d+\.\d+", version), version


@pytest.mark.integration
def test_promtool_accepts_the_rule_files() -> None:
    output = run_tool("promtool", "check", "rules", *map(str, RULE_FILES))
    assert output.count("SUCCESS") == len(RULE_FILES), output
    assert f"{len(_records())} rules found" in output
    assert f"{len(_alerts())} rules found" in output


@pytest.mark.integration
def test_rule_unit_tests_pass() -> None:
    output = run_tool(
        "promtool",
        "test",
        "rules",
        *(p.name for p in RULE_TEST_FILES),
        cwd=RULE_TEST_FILES[0].parent,
    )
    assert output.count("SUCCESS") == len(RULE_TEST_FILES), output


@pytest.mark.integration
def test_rule_unit_tests_catch_a_changed_threshold(tmp_path: Path) -> None:
    """The unit tests have teeth: a rule with a moved threshold fails them."""
    rules = tmp_path / "rules"
    shutil.copytree(PROMETHEUS_DIR, rules, ignore=shutil.ignore_patterns("*.md"))
    alerts = rules / "alerts.yaml"
    text = alerts.read_text(encoding="utf-8")
    assert "(dataset:dataset_tasks_failed:ratio > 0.1)" in text
    alerts.write_text(text.replace("ratio > 0.1)", "ratio > 0.25)"), encoding="utf-8")
    with pytest.raises(AssertionError, match="IceProdDatasetTaskFailureRatioHigh"):
        run_tool("promtool", "test", "rules", "alerts-test.yaml", cwd=rules / "tests")


def test_required_alerts_exist_with_severity_and_annotations() -> None:
    alerts = {rule["alert"]: rule for rule in _alerts()}
    assert set(alerts) >= REQUIRED_ALERTS, REQUIRED_ALERTS - set(alerts)
    dashboard_uids = {d["uid"] for d in load_dashboards().values()}
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        for key in ("summary", "description", "dashboard_url"):
            assert annotations.get(key, "").strip(), f"{name}: no {key} annotation"
        match = re.search(r"/d/([\w-]+)/", annotations["dashboard_url"])
        assert match, f"{name}: dashboard_url does not link a dashboard uid"
        assert match.group(1) in dashboard_uids, f"{name}: unknown dashboard {match.group(1)}"
        assert "for" in rule, f"{name}: no for: duration"


def test_per_dataset_alerts_name_the_dataset() -> None:
    """Alerts whose firing cases (checked by promtool) carry a dataset label name it."""
    per_dataset = {
        check["alertname"]
        for case in _unit_tests(RULE_TEST_FILES[1])
        for check in case.get("alert_rule_test", [])
        for alert in check.get("exp_alerts") or []
        if "dataset" in alert.get("exp_labels", {})
    }
    assert {"IceProdDatasetErrors", "IceProdDatasetStalled"} <= per_dataset
    for rule in _alerts():
        annotations = rule["annotations"]
        if rule["alert"] not in per_dataset:
            assert "$labels.dataset" not in str(annotations), rule["alert"]
            continue
        for key in ("summary", "description"):
            assert "{{ $labels.dataset }}" in annotations[key], f"{rule['alert']}: {key}"
        assert annotations["dashboard_url"].endswith("var-dataset={{ $labels.dataset }}")
        assert "/d/iceprod-dataset/" in annotations["dashboard_url"]


def test_exporter_down_alert_watches_the_exporter_job() -> None:
    rule = next(r for r in _alerts() if r["alert"] == "IceProdExporterDown")
    assert f'up{{job="{EXPORTER_JOB}"}} == 0' in rule["expr"]


def test_every_alert_has_a_firing_case_and_a_near_miss() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for case in _unit_tests(RULE_TEST_FILES[1]):
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in _alerts()}
    assert names - fires == set(), f"alerts never shown firing: {sorted(names - fires)}"
    assert names - silent == set(), f"alerts without a near miss: {sorted(names - silent)}"
    assert (fires | silent) - names == set(), "tests of alerts that do not exist"


def test_every_recording_rule_is_unit_tested() -> None:
    tested = " ".join(
        check["expr"]
        for path in RULE_TEST_FILES
        for case in _unit_tests(path)
        for check in case.get("promql_expr_test", [])
    )
    untested = [r["record"] for r in _records() if r["record"] not in tested]
    assert untested == []


def test_recording_rule_names_follow_level_metric_operations() -> None:
    for rule in _records():
        level, metric, operations = rule["record"].split(":")
        assert level in ("iceprod", "dataset"), rule["record"]
        assert re.fullmatch(r"[a-z][a-z0-9_]*", metric), rule["record"]
        assert re.fullmatch(r"[a-z][a-z0-9_]*", operations), rule["record"]


def test_rules_use_only_metrics_and_labels_of_the_contract() -> None:
    known = known_metrics()
    problems = [
        f"{rule.get('alert') or rule.get('record')}: {problem}"
        for path in RULE_FILES
        for rule in load_rules(path)
        for problem in check_expression(rule["expr"], known)
    ]
    assert problems == []


def test_rules_count_each_replica_once() -> None:
    """HA and sharding: raw IceProd series are reduced to one copy before they are summed."""
    problems = [
        f"{rule.get('alert') or rule.get('record')}: {problem}"
        for path in RULE_FILES
        for rule in load_rules(path)
        for problem in replica_problems(rule["expr"])
    ]
    assert problems == [], "wrap the series in max without (instance, pod) (...)"


def _series(case: dict[str, Any]) -> list[tuple[str, dict[str, str], str]]:
    """(metric name, labels, values) of every input series of a promtool test case."""
    found = []
    for entry in case["input_series"]:
        name = entry["series"].split("{", 1)[0]
        found.append((name, dict(_LABEL_RE.findall(entry["series"])), str(entry["values"])))
    return found


def _without_targets(series: list[tuple[str, dict[str, str], str]]) -> Counter[str]:
    drop = REPLICA_LABELS | {"job"}
    return Counter(
        f"{name}{sorted((k, v) for k, v in labels.items() if k not in drop)} {values}"
        for name, labels, values in series
    )


def test_recording_cases_export_one_iceprod_three_ways() -> None:
    """The HA and sharding cases of recording-test.yaml prove what their names say.

    Same expectations for all three (a YAML anchor); the sharded inputs are the unsharded ones
    split into disjoint datasets; the HA inputs are the sharded ones, each exactly twice, the
    copies differing only in `instance` and `pod`.
    """
    cases = {case["name"]: case for case in _unit_tests(RULE_TEST_FILES[0])}
    one, shards, ha = cases[ONE_EXPORTER], cases[TWO_SHARDS], cases[HA_SHARDS]
    assert one["promql_expr_test"] == shards["promql_expr_test"] == ha["promql_expr_test"]
    tested = " ".join(check["expr"] for check in one["promql_expr_test"])
    assert all(r["record"] in tested for r in _records()), "every rule, in all three ways"

    assert len({labels["instance"] for _, labels, _ in _series(one)}) == 1
    assert _without_targets(_series(shards)) == _without_targets(_series(one))
    owners: dict[str, set[str]] = {}
    for _, labels, _ in _series(shards):
        owners.setdefault(labels["dataset"], set()).add(labels["instance"])
    assert all(len(o) == 1 for o in owners.values()), f"a dataset on two shards: {owners}"
    assert len(set().union(*owners.values())) == 2, "two shards"

    twice = _without_targets(_series(shards))
    assert _without_targets(_series(ha)) == twice + twice
    copies: dict[str, set[tuple[str, str]]] = {}
    for name, labels, _ in _series(ha):
        key = f"{name}{sorted((k, v) for k, v in labels.items() if k not in REPLICA_LABELS)}"
        copies.setdefault(key, set()).add((labels["instance"], labels["pod"]))
    assert all(len(c) == 2 for c in copies.values()), "each series from two replicas"


@pytest.mark.integration
def test_recording_rules_without_deduplication_fail_the_ha_cases(tmp_path: Path) -> None:
    """The HA cases have teeth: rules that sum every replica's copy fail them.

    Those were the rules before HA support; the one-exporter and sharded cases still pass.
    """
    rules = tmp_path / "rules"
    shutil.copytree(PROMETHEUS_DIR, rules, ignore=shutil.ignore_patterns("*.md"))
    recording = rules / "recording.yaml"
    text = recording.read_text(encoding="utf-8")
    naive, count = re.subn(r"max without \(instance, pod\) \((\w+)\)", r"\1", text)
    assert count >= 4, "the rules no longer deduplicate as this test expects"
    recording.write_text(naive, encoding="utf-8")
    document = yaml.safe_load(RULE_TEST_FILES[0].read_text(encoding="utf-8"))
    results = {}
    for index, case in enumerate(document["tests"]):
        single = {**document, "tests": [case]}
        path = rules / "tests" / f"case-{index}.yaml"
        path.write_text(yaml.safe_dump(single), encoding="utf-8")
        try:
            run_tool("promtool", "test", "rules", path.name, cwd=path.parent)
            results[case["name"]] = "pass"
        except AssertionError:
            results[case["name"]] = "fail"
    assert results == {
        ONE_EXPORTER: "pass",
        TWO_SHARDS: "pass",
        HA_SHARDS: "fail",
        ROLLING_UPDATE: "fail",
    }


@pytest.mark.integration
def test_prometheus_config_is_valid_and_scrapes_the_exporter() -> None:
    config_file = PROMETHEUS_DIR / "prometheus.yml"
    output = run_tool("promtool", "check", "config", str(config_file))
    assert "SUCCESS" in output and "FAILED" not in output, output
    config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    assert config["global"]["scrape_interval"] == "30s"
    assert set(config["rule_files"]) == {"recording.yaml", "alerts.yaml"}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert EXPORTER_JOB in jobs


@pytest.mark.integration
def test_alertmanager_config_is_valid() -> None:
    output = run_tool("amtool", "check-config", str(PROMETHEUS_DIR / "alertmanager.yml"))
    assert "SUCCESS" in output, output
    config = yaml.safe_load((PROMETHEUS_DIR / "alertmanager.yml").read_text(encoding="utf-8"))
    alert_names = {rule["alert"] for rule in _alerts()}
    for inhibit in config["inhibit_rules"]:
        for matcher in inhibit["source_matchers"] + inhibit["target_matchers"]:
            names = re.fullmatch(r'alertname=~?"([^"]+)"', matcher)
            assert names, matcher
            assert set(names.group(1).split("|")) <= alert_names, matcher


def test_dashboards_directory_is_the_one_alerts_link() -> None:
    assert DASHBOARD_DIR.is_dir()
    assert {p.name for p in DASHBOARD_DIR.glob("*.json")} == {
        "iceprod-overview.json",
        "iceprod-dataset.json",
        "iceprod-exporter.json",
    }
