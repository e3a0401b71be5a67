"""The deploy files the tests read: the Dockerfile (parsed once per module) and the systemd unit."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import deploy as support
from tests.support.deploy import DEPLOY, REPO

DOCKERFILE = REPO / "Dockerfile"


SYSTEMD_UNIT = DEPLOY / "systemd" / "iceprod-exporter.service"


@pytest.fixture(scope="module")
def dockerfile() -> support.Dockerfile:
    return support.parse_dockerfile(DOCKERFILE)


def unit_values(path: Path) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values
