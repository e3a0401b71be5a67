"""The shipped rule files and recording-test cases, as the rule tests read them."""

from __future__ import annotations

from typing import Any

from tests.support.monitoring import (
    PROMETHEUS_DIR,
    load_rules,
)

ALERTS = PROMETHEUS_DIR / "alerts.yaml"


RECORDING = PROMETHEUS_DIR / "recording.yaml"


ALERTMANAGER = PROMETHEUS_DIR / "alertmanager.yml"


#: the cases of recording-test.yaml that export one IceProd in three ways (see its header)
ONE_EXPORTER = "one exporter"


TWO_SHARDS = "two shards with disjoint datasets"


HA_SHARDS = "two shards, each as two identical replicas (HA)"


JOINS = "other IceProd exporters on our labels"


def alert_rules() -> list[dict[str, Any]]:
    return [rule for rule in load_rules(ALERTS) if "alert" in rule]


def recording_rules() -> list[dict[str, Any]]:
    return [rule for rule in load_rules(RECORDING) if "record" in rule]
