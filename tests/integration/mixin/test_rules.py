"""The Prometheus rules and configs in deploy/prometheus, run by the real tools.

promtool and amtool come from Debian's prometheus and prometheus-alertmanager packages (2.42 and
0.25 on Debian 12); tests.support.monitoring.tool() installs them when missing and fails (never
skips) when it cannot. The rule unit tests must pass, and must fail on a changed threshold.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from grafana.mixin import config, generate
from tests.support import rules as shipped
from tests.support.monitoring import (
    EXPORTER_JOB,
    PROMETHEUS_DIR,
    RULE_FILES,
    RULE_TEST_FILES,
    load_rules,
    run_tool,
    tool_version,
)

ROLLING_UPDATE = "a replica is replaced during a rolling update"


def _rules_rendered_with(tmp_path: Path, **changes: Any) -> Path:
    """A copy of deploy/prometheus whose rule files the mixin rendered from a changed config."""
    rules = tmp_path / "rules"
    shutil.copytree(PROMETHEUS_DIR, rules, ignore=shutil.ignore_patterns("*.md"))
    rendered = generate.rule_files(dataclasses.replace(config.DEFAULT, **changes))
    for name, text in rendered.items():
        (rules / name).write_text(text, encoding="utf-8")
    return rules


@pytest.mark.parametrize("name", ["promtool", "prometheus", "alertmanager", "amtool"])
def test_tools_are_installed_and_recent(name: str) -> None:
    version = tool_version(name)
    assert re.match(r"\d+\.\d+\.\d+", version), version


def test_promtool_accepts_the_rule_files() -> None:
    output = run_tool("promtool", "check", "rules", *map(str, RULE_FILES))
    assert output.count("SUCCESS") == len(RULE_FILES), output
    assert f"{len(shipped.recording_rules())} rules found" in output
    assert f"{len(shipped.alert_rules())} rules found" in output


def test_rule_unit_tests_pass() -> None:
    output = run_tool(
        "promtool",
        "test",
        "rules",
        *(p.name for p in RULE_TEST_FILES),
        cwd=RULE_TEST_FILES[0].parent,
    )
    assert output.count("SUCCESS") == len(RULE_TEST_FILES), output


def test_rule_unit_tests_catch_a_changed_threshold(tmp_path: Path) -> None:
    """The unit tests have teeth: the rules rendered with a moved threshold fail them."""
    rules = _rules_rendered_with(tmp_path, failure_ratio=0.25)
    assert "(dataset:dataset_tasks_failed:ratio > 0.25)" in (rules / "alerts.yaml").read_text()
    with pytest.raises(AssertionError, match="IceProdDatasetTaskFailureRatioHigh"):
        run_tool("promtool", "test", "rules", "alerts-test.yaml", cwd=rules / "tests")


def test_recording_rules_without_deduplication_fail_the_ha_cases(tmp_path: Path) -> None:
    """The HA cases have teeth: rules that sum every replica's copy fail them.

    Those were the rules before HA support; the one-exporter and sharded cases still pass.
    """
    rules = _rules_rendered_with(tmp_path, replica_labels=())
    assert not any("max without" in r["expr"] for r in load_rules(rules / "recording.yaml"))
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
        shipped.ONE_EXPORTER: "pass",
        shipped.TWO_SHARDS: "pass",
        shipped.HA_SHARDS: "fail",
        ROLLING_UPDATE: "fail",
        shipped.JOINS: "pass",
    }


def test_prometheus_config_is_valid_and_scrapes_the_exporter() -> None:
    config_file = PROMETHEUS_DIR / "prometheus.yml"
    output = run_tool("promtool", "check", "config", str(config_file))
    assert "SUCCESS" in output and "FAILED" not in output, output
    config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    assert config["global"]["scrape_interval"] == "30s"
    assert set(config["rule_files"]) == {"recording.yaml", "alerts.yaml"}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert EXPORTER_JOB in jobs


def test_alertmanager_config_is_valid() -> None:
    output = run_tool("amtool", "check-config", str(shipped.ALERTMANAGER))
    assert "SUCCESS" in output, output
    document = yaml.safe_load(shipped.ALERTMANAGER.read_text(encoding="utf-8"))
    alert_names = {rule["alert"] for rule in shipped.alert_rules()}
    for inhibit in document["inhibit_rules"]:
        for matcher in inhibit["source_matchers"] + inhibit["target_matchers"]:
            if matcher == 'dataset=~".+"':
                continue
            names = re.fullmatch(r'alertname=~?"([^"]+)"', matcher)
            assert names, matcher
            assert set(names.group(1).split("|")) <= alert_names, matcher


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        ("alertname=IceProdDatasetErrors dataset=20001 group=simprod username=alice", "simprod"),
        ("alertname=IceProdDatasetStalled dataset=30001 group=filtering username=bob", "filtering"),
        ("alertname=IceProdDatasetErrors dataset=20002 group=users username=carol", "users"),
        ("alertname=IceProdDatasetErrors dataset=20003 group=icetray username=dave", None),
        ("alertname=IceProdAPIDown severity=critical job=iceprod-exporter instance=a", "oncall"),
        ("alertname=IceProdGridDown severity=warning job=iceprod-grid instance=g:9000", None),
        # housekeeping goes to the operators, even with a dataset and its owners on it
        (
            "alertname=IceProdDatasetCompletionOverdue severity=warning cron=dataset_completion "
            "dataset=20001 group=simprod username=alice",
            None,
        ),
        ("alertname=IceProdTaskQueueingStalled severity=warning cron=queue_tasks", None),
        ("alertname=IceProdDatasetStarved dataset=20001 group=simprod username=alice", "simprod"),
    ],
)
def test_amtool_routes_each_alert_to_its_receiver(labels: str, receiver: str | None) -> None:
    """Alertmanager's own routing (amtool config routes test) on the shipped example."""
    if receiver in config.DEFAULT.iceprod_groups:
        expected = f"iceprod-group-{receiver}"
    else:
        expected = "iceprod-oncall" if receiver == "oncall" else "iceprod-operators"
    output = run_tool(
        "amtool",
        "config",
        "routes",
        "test",
        f"--config.file={shipped.ALERTMANAGER}",
        f"--verify.receivers={expected}",
        *labels.split(),
    )
    routed = [line.strip() for line in output.splitlines() if not line.startswith("Warning:")]
    assert routed == [expected], output
