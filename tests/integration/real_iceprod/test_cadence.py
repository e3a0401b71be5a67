"""Against the real IceProd 3.2.43: what the exporter asks of quiet datasets, and what it skips.

Its own server and seed: the test completes a task, which the other real-IceProd tests must not
see. The exporter runs as its real CLI through a recording proxy, with every interval scaled
down (a poll every second, quiet datasets every :data:`QUIET` seconds):

- a processing dataset whose counts stay unchanged is read at most once per quiet interval and
  at least once within it; ``task_stats`` is not read while no task completes;
- a completed task shows in the exporter within the quiet interval, ``task_stats`` is read on
  the next cycle, and the dataset is read every cycle again;
- the server answers ``If-None-Match`` with 304, which the exporter does not use: Tornado
  computes the ETag from the finished body, so the aggregation runs all the same.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from iceprod_simulator import OIDCIssuer
from tests.support.exporter import free_port, http_get, start_exporter, wait_for
from tests.support.real_iceprod import expected
from tests.support.real_iceprod.harness import ADMIN_CLAIMS, SYSTEM_CLAIMS, RealIceProd, fetch_token
from tests.support.real_iceprod.proxy import RecordingProxy
from tests.support.real_iceprod.scenario import SCENARIO
from tests.support.real_iceprod.seed import SeededScenario, seed_scenario

AUDIENCE = "iceprod"
SYSTEM = ("cadence-exporter", "cadence-Secret-51e0a7")
ADMIN = ("cadence-admin", "cadence-admin-secret")
QUIET = 6.0  # quiet_poll_interval of the exporter under test
COUNTS = ("/job_counts/status", "/task_counts/name_status")


@dataclass
class World:
    issuer: OIDCIssuer
    api: RealIceProd
    seeded: SeededScenario

    def token(self) -> str:
        return fetch_token(self.issuer.url, *SYSTEM)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with OIDCIssuer(token_ttl=300, audience=AUDIENCE) as issuer:
        issuer.register_client(*SYSTEM, SYSTEM_CLAIMS)
        issuer.register_client(*ADMIN, ADMIN_CLAIMS)
        tmp = tmp_path_factory.mktemp("real-iceprod-cadence")
        with RealIceProd(issuer.url, AUDIENCE, log_dir=tmp) as api:
            seeded = seed_scenario(
                api.url,
                lambda: fetch_token(issuer.url, *SYSTEM),
                lambda: fetch_token(issuer.url, *ADMIN),
            )
            yield World(issuer, api, seeded)


def _processing_task() -> tuple[str, str, int, int]:
    """(dataset key, task name, job index, task index) of a processing task to complete."""
    for ds in SCENARIO.datasets:
        if ds.status != "processing":
            continue
        for j, job in enumerate(ds.jobs):
            for t, task in enumerate(job.tasks):
                if task.status == "processing":
                    return ds.key, ds.task_defs[t].name, j, t
    raise AssertionError("the scenario has no processing task")


def _per_dataset(records: list[str], world: World, route: str) -> Counter[str]:
    """Requests of ``route`` per dataset key."""
    keys = {d.dataset_id: key for key, d in world.seeded.datasets.items()}
    out: Counter[str] = Counter()
    for path in records:
        for dataset_id, key in keys.items():
            if f"/datasets/{dataset_id}{route}" in path:
                out[key] += 1
    return out


def _value(url: str, name: str, **labels: str) -> float | None:
    status, body = http_get(url + "metrics")
    assert status == 200
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def test_the_server_answers_if_none_match_with_304(world: World) -> None:
    headers = {"Authorization": "Bearer " + world.token()}
    dataset_id = world.seeded.datasets[_processing_task()[0]].dataset_id
    for route in (*COUNTS, "/task_stats"):
        url = f"{world.api.url}/datasets/{dataset_id}{route}"
        first = requests.get(url, headers=headers, timeout=10)
        assert first.status_code == 200 and first.headers.get("Etag"), route
        again = requests.get(
            url, headers={**headers, "If-None-Match": first.headers["Etag"]}, timeout=10
        )
        assert again.status_code == 304 and again.content == b"", route


def test_quiet_datasets_are_read_within_the_bound_and_a_change_brings_them_back(
    world: World, tmp_path: Path
) -> None:
    watched = {ds.key for ds in SCENARIO.datasets if ds.status == "processing"}
    with RecordingProxy(world.api.url) as proxy:
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        env = {
            "API_URL": proxy.url,
            "OAUTH_URL": world.issuer.url,
            "OAUTH_CLIENT_ID": SYSTEM[0],
            "OAUTH_CLIENT_SECRET": SYSTEM[1],
            "PROMETHEUS_PORT": str(port),
            "ICEPROD_EXPORTER_LISTEN_ADDRESS": "127.0.0.1",
            "ICEPROD_EXPORTER_POLL_INTERVAL": "1",
            "ICEPROD_EXPORTER_QUIET_AFTER_POLLS": "2",
            "ICEPROD_EXPORTER_QUIET_POLL_INTERVAL": str(QUIET),
            "ICEPROD_EXPORTER_TASK_STATS_INTERVAL": "1",
            "ICEPROD_EXPORTER_LOG_FORMAT": "json",
        }
        log = tmp_path / "exporter.log"
        exporter = start_exporter(env, url, log)
        try:
            polls = "iceprod_exporter_poll_duration_seconds_count"
            wait_for(lambda: (_value(url, polls) or 0) >= 8, 60, "8 polls", diagnose=log.read_text)
            # every dataset is quiet now (unchanged twice): one quiet interval of requests
            start = len(proxy.records())
            time.sleep(QUIET + 1.5)
            window = [r.path for r in proxy.records()[start:]]
            cycles = sum(1 for p in window if p.startswith("/datasets?"))
            assert cycles >= 5, f"only {cycles} cycles in {QUIET + 1.5}s"
            for route in COUNTS:
                reads = {
                    k: n for k, n in _per_dataset(window, world, route).items() if k in watched
                }
                assert set(reads) == watched, f"{route}: read within the bound: {reads}"
                assert max(reads.values()) <= 2, f"{route}: quiet, yet {reads}"
            assert not _per_dataset(window, world, "/task_stats"), "no task completed"

            key, name, j, t = _processing_task()
            number = str(expected.dataset_numbers()[key])
            before = _value(url, "iceprod_dataset_tasks", dataset=number, task_name=name,
                            status="complete") or 0.0  # fmt: skip
            task_id = world.seeded.datasets[key].task_ids[j][t]
            start, changed = len(proxy.records()), time.monotonic()
            done = requests.put(
                f"{world.api.url}/tasks/{task_id}/status",
                json={"status": "complete"},
                headers={"Authorization": "Bearer " + world.token()},
                timeout=10,
            )
            assert done.status_code == 200, done.text
            wait_for(
                lambda: (
                    _value(url, "iceprod_dataset_tasks", dataset=number, task_name=name,
                           status="complete") or 0.0
                ) == before + 1,
                QUIET + 5,
                "the completed task in the exporter",
            )  # fmt: skip
            seen = time.monotonic() - changed
            assert seen <= QUIET + 3, f"seen after {seen:.1f}s, bound {QUIET}s"
            time.sleep(3.5)  # busy again: read every cycle, task_stats once
            after = [r.path for r in proxy.records()[start:]]
            assert _per_dataset(after, world, COUNTS[0])[key] >= 3, "read every cycle again"
            stats = _per_dataset(after, world, "/task_stats")
            assert stats[key] >= 1, "task_stats read after a task completed"
            assert set(stats) == {key}, f"task_stats only where tasks completed: {stats}"
        finally:
            exporter.terminate()
            exporter.wait(20)
