"""The committed dashboards and rule files are what the mixin generates (it renders them all)."""

from __future__ import annotations

from grafana.mixin import generate
from tests.support.dashboards import UIDS


def test_committed_artefacts_are_what_the_mixin_generates() -> None:
    assert set(generate.dashboard_json()) == set(UIDS)
    stale = generate.drift(generate.outputs())
    assert not stale, (
        "these files differ from what grafana/mixin/ generates: change the mixin and run "
        "`make generate`\n" + "\n".join(stale.values())
    )
