"""Prove the real-IceProd harness: server, auth via a local OIDC issuer, seed, dataset_monitor.

Runs the real ``iceprod==3.2.43`` REST server from its pinned venv (built on first use; a
failed build fails these tests, it never skips them).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client.parser import text_string_to_metric_families

from iceprod_simulator.issuer import OIDCIssuer
from tests.support.real_iceprod import expected
from tests.support.real_iceprod.harness import (
    ADMIN_CLAIMS,
    SYSTEM_CLAIMS,
    USER_CLAIMS,
    RealIceProd,
    fetch_token,
)
from tests.support.real_iceprod.scenario import SCENARIO
from tests.support.real_iceprod.seed import SeededScenario, seed_scenario
from tests.support.real_iceprod.venv import (
    MARKER_NAME,
    ensure_venv,
    find_base_python,
    requirements_hash,
)

AUDIENCE = "iceprod"
CLIENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "exporter-system": ("system-secret", SYSTEM_CLAIMS),
    "tester-admin": ("admin-secret", ADMIN_CLAIMS),
    "tester-user": ("user-secret", USER_CLAIMS),
    # Valid IceCube groups but an empty preferred_username (overriding the issuer's default):
    # IceProd then has no current_user and answers 403 "authentication failed".
    "tester-nameless": (
        "nameless-secret",
        {"groups": ["/institutions/IceCube/UW-Madison"], "preferred_username": ""},
    ),
}
DATASET_KEYS = (
    "dataset|description|group|username|status|jobs_submitted|tasks_submitted|"
    "tasks_per_job|priority|truncated|always_active"
)


@pytest.fixture(scope="module")
def issuer() -> Iterator[OIDCIssuer]:
    iss = OIDCIssuer(token_ttl=600, port=0)
    iss.start()
    for client_id, (secret, claims) in CLIENTS.items():
        iss.register_client(client_id, secret, claims)
    try:
        yield iss
    finally:
        iss.stop()


@pytest.fixture(scope="module")
def iceprod(issuer: OIDCIssuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealIceProd]:
    with RealIceProd(issuer.url, AUDIENCE, log_dir=tmp_path_factory.mktemp("iceprod")) as srv:
        yield srv
    assert srv.returncode == 0, srv.log_tail()  # clean SIGTERM shutdown


def token(issuer: OIDCIssuer, client_id: str) -> str:
    """Fresh access token for one of CLIENTS."""
    return fetch_token(issuer.url, client_id, CLIENTS[client_id][0])


def auth(tok: str) -> dict[str, str]:
    """Bearer header."""
    return {"Authorization": "Bearer " + tok}


@pytest.fixture(scope="module")
def seeded(iceprod: RealIceProd, issuer: OIDCIssuer) -> SeededScenario:
    t0 = time.monotonic()
    result = seed_scenario(
        iceprod.url, token(issuer, "exporter-system"), token(issuer, "tester-admin")
    )
    print(f"seeded {result.requests} requests in {time.monotonic() - t0:.2f}s")
    return result


@pytest.fixture
def system(issuer: OIDCIssuer) -> dict[str, str]:
    return auth(token(issuer, "exporter-system"))


def get(iceprod: RealIceProd, path: str, headers: dict[str, str], **params: str) -> Any:
    r = requests.get(iceprod.url + path, headers=headers, params=params, timeout=30)
    assert r.status_code == 200, (path, r.status_code, r.text)
    return r.json()


def test_server_starts_and_is_healthy(iceprod: RealIceProd, issuer: OIDCIssuer) -> None:
    r = requests.get(iceprod.url + "/healthz", timeout=10)
    assert r.status_code == 200 and r.json() == {}
    # /healthz is a bare tornado handler; API routes (even a 403) carry IceProd's header.
    assert requests.get(iceprod.url + "/datasets", timeout=10).headers["Server"] == "IceProd/3.2.43"
    assert iceprod.url.startswith("http://127.0.0.1:")
    assert iceprod.startup_seconds is not None and iceprod.startup_seconds < 60
    log = iceprod.log_text()
    assert f'enabling auth via {issuer.url} for aud "{AUDIENCE}"' in log
    assert "CI_TESTING is enabled" not in log  # real OIDC validation, not the HS512 test mode


def test_system_token_reads_seeded_datasets(
    iceprod: RealIceProd, seeded: SeededScenario, system: dict[str, str]
) -> None:
    listed = get(iceprod, "/datasets", system, keys=DATASET_KEYS)
    assert set(listed) == {d.dataset_id for d in seeded.datasets.values()}
    numbers = expected.dataset_numbers()
    for ds in SCENARIO.datasets:
        sd = seeded.datasets[ds.key]
        assert sd.dataset == numbers[ds.key]
        want = expected.dataset_metadata(ds, numbers[ds.key])
        assert listed[sd.dataset_id] == {"dataset_id": sd.dataset_id, **want}
        full = get(iceprod, f"/datasets/{sd.dataset_id}", system)
        assert {k: full[k] for k in want} == want
    summaries = get(iceprod, "/dataset_summaries/status", system)
    assert list(summaries) == ["processing", "suspended", "errors", "complete"]
    grids = get(iceprod, "/grids", system)
    assert sorted(g["host"] for g in grids.values()) == sorted(g.host for g in SCENARIO.grids)
    assert {g["host"]: g["version"] for g in grids.values()} == {
        g.host: g.patch.get("version", g.version) for g in SCENARIO.grids
    }


def test_bad_tokens_get_403(
    iceprod: RealIceProd, issuer: OIDCIssuer, seeded: SeededScenario
) -> None:
    dataset_id = seeded.datasets["sim_active"].dataset_id
    path = f"/datasets/{dataset_id}/job_counts/status"

    def status(headers: dict[str, str], p: str = path) -> tuple[int, Any]:
        r = requests.get(iceprod.url + p, headers=headers, timeout=10)
        return r.status_code, r.json()

    auth_failed = (403, {"code": 403, "error": "authentication failed"})
    assert status({}) == auth_failed
    assert status(auth("not-a-jwt")) == auth_failed
    # Right kid and claims, wrong signing key.
    real = token(issuer, "exporter-system")
    header = jwt.get_unverified_header(real)
    claims = jwt.decode(real, options={"verify_signature": False})
    forged_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims, forged_key, algorithm="RS256", headers={"kid": header["kid"]})
    assert status(auth(forged)) == auth_failed
    # Same payload re-signed with alg=none is refused too (only RS256/RS512 accepted).
    unsigned = ".".join(
        [
            base64.urlsafe_b64encode(
                b'{"alg":"none","typ":"JWT","kid":"%s"}' % header["kid"].encode()
            )
            .rstrip(b"=")
            .decode(),
            real.split(".")[1],
            "",
        ]
    )
    assert status(auth(unsigned)) == auth_failed
    # A valid token without preferred_username has no IceProd username -> authentication fails.
    assert status(auth(token(issuer, "tester-nameless"))) == auth_failed
    # A plain IceCube user reads per-dataset routes but not the system/admin-only ones.
    assert status(auth(token(issuer, "tester-user")))[0] == 200
    assert status(auth(token(issuer, "tester-user")), "/grids") == (
        403,
        {"code": 403, "error": "authorization failed"},
    )


def test_audience_is_enforced_only_when_configured(issuer: OIDCIssuer, tmp_path: Path) -> None:
    headers = auth(token(issuer, "exporter-system"))  # aud == "iceprod"
    for audience, want in (("iceprod-production", 403), ("", 200)):
        with RealIceProd(
            issuer.url, audience, log_dir=tmp_path / (audience or "none"), prometheus=False
        ) as other:
            r = requests.get(other.url + "/datasets", headers=headers, timeout=10)
            assert r.status_code == want, (audience, r.text)


def test_counts_match_expected(
    iceprod: RealIceProd, seeded: SeededScenario, system: dict[str, str]
) -> None:
    for ds in SCENARIO.datasets:
        base = f"/datasets/{seeded.datasets[ds.key].dataset_id}"
        jobs = get(iceprod, base + "/job_counts/status", system)
        assert list(jobs.items()) == list(expected.job_counts(ds).items()), ds.key
        by_name = get(iceprod, base + "/task_counts/name_status", system)
        want = expected.task_counts_name_status(ds)
        assert by_name == want, ds.key
        assert list(by_name) == list(want), f"{ds.key}: task names out of task_index order"
        totals = get(iceprod, base + "/task_counts/status", system)
        assert list(totals.items()) == list(expected.task_counts_status(ds).items()), ds.key


def test_job_and_task_documents_match_scenario(
    iceprod: RealIceProd, seeded: SeededScenario, system: dict[str, str]
) -> None:
    for ds in SCENARIO.datasets:
        base = f"/datasets/{seeded.datasets[ds.key].dataset_id}"
        jobs = get(iceprod, base + "/jobs", system, keys="job_index|status")
        assert sorted((j["job_index"], j["status"]) for j in jobs.values()) == [
            (i, job.status) for i, job in enumerate(ds.jobs)
        ], ds.key
        want = expected.task_documents(ds)
        tasks = get(
            iceprod,
            base + "/tasks",
            system,
            keys="|".join(["job_index", "name", *next(iter(want.values()), {})]),
        )
        got = {
            (t["job_index"], t["name"]): {k: t[k] for k in want[t["job_index"], t["name"]]}
            for t in tasks.values()
        }
        assert got == want, ds.key


def test_task_stats_match_expected(
    iceprod: RealIceProd, seeded: SeededScenario, system: dict[str, str]
) -> None:
    for ds in SCENARIO.datasets:
        got = get(iceprod, f"/datasets/{seeded.datasets[ds.key].dataset_id}/task_stats", system)
        want = expected.task_stats(ds)
        assert list(got) == list(want), ds.key
        for name, stats in want.items():
            assert got[name] == pytest.approx(stats), (ds.key, name)
    assert any(expected.task_stats(ds) for ds in SCENARIO.datasets)


def test_dataset_monitor_wrapper(iceprod: RealIceProd, seeded: SeededScenario) -> None:
    t0 = time.monotonic()
    text = iceprod.run_dataset_monitor("exporter-system", CLIENTS["exporter-system"][0])
    print(f"dataset_monitor run: {time.monotonic() - t0:.2f}s")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    want = expected.dataset_monitor()
    label_order = {
        "iceprod_jobs": ("dataset", "status"),
        "iceprod_tasks": ("dataset", "taskname", "status"),
        "iceprod_future_resources_hours": ("resource",),
    }
    for name, labels in label_order.items():
        got = {tuple(s.labels[k] for k in labels): s.value for s in families[name].samples}
        assert got == want[name], name
    assert want["iceprod_jobs"], "scenario must give dataset_monitor processing datasets"
    info = families["iceprod_info"].samples[0].labels
    assert info["type"] == "cron" and info["version"] == "3.2.43"


def test_server_own_metrics(
    iceprod: RealIceProd, seeded: SeededScenario, system: dict[str, str]
) -> None:
    dataset_id = seeded.datasets["sim_active"].dataset_id
    get(iceprod, f"/datasets/{dataset_id}/task_counts/name_status", system)
    assert iceprod.prometheus_url is not None
    r = requests.get(iceprod.prometheus_url, timeout=10)
    assert r.status_code == 200
    assert 'iceprod_info{type="api",version="3.2.43"} 1.0' in r.text
    assert 'handler="tasks.DatasetTaskCountsNameStatusHandler"' in r.text


def test_venv_is_reused(iceprod: RealIceProd) -> None:
    t0 = time.monotonic()
    python = ensure_venv(iceprod.venv_dir)
    assert time.monotonic() - t0 < 5, "second ensure_venv must not rebuild"
    marker = (iceprod.venv_dir / MARKER_NAME).read_text().strip()
    assert marker == requirements_hash(find_base_python())
    assert python.exists()
