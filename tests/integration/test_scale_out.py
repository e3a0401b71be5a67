"""The sharded deployment run for real: 3 shards x 2 replicas on 1,000 simulated datasets.

Six ``iceprod-exporter run`` processes and an unsharded one against one simulated IceProd, and
a real Prometheus with the shipped rules (see ``tests/support/scale_out.py``). ``make scale-out``
runs the same at 10,000 datasets and prints its figures.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.scale_out import (
    Deployment,
    Plan,
    check_replica_kill,
    check_shard_kill,
    check_union,
    deploy,
)

# seven exporters, a simulated IceProd and a real Prometheus
pytestmark = [pytest.mark.timeout(240)]

# one poll each within the test (the world is frozen: a second one would read the same)
PLAN = Plan(datasets=1000, poll_interval=60.0, scrape_interval=1.0, ready_timeout=90.0)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    workdir: Path = tmp_path_factory.mktemp("scale-out")
    with deploy(PLAN, workdir) as running:
        yield running


def test_sharded_deployment(deployment: Deployment) -> None:
    """Union = unsharded; one replica down: same totals; a shard down: its datasets alone go."""
    # in this order: the union check keeps the expositions the shard check compares with
    for check in (check_union, check_replica_kill, check_shard_kill):
        finding = check(deployment)
        assert finding.ok, finding.report()
