"""An issuer with the simulator's clients, and a small scenario store, for the simulator tests."""

from collections.abc import Iterator

import pytest
import requests

from iceprod_simulator import (
    SYSTEM_ROLE_CLAIMS,
    OIDCIssuer,
    SimulatedIceProd,
    Store,
)

ALICE = {"groups": ["/institutions/IceCube"], "preferred_username": "alice"}


ADMIN = {"groups": ["/tokens/IceProdAdmins"], "preferred_username": "root"}


NAMELESS = {"groups": ["/institutions/IceCube"], "preferred_username": None}


@pytest.fixture(scope="module")
def issuer() -> Iterator[OIDCIssuer]:
    """One issuer with a system client, plain users, an admin and a public CLI client."""
    with OIDCIssuer() as iss:
        iss.register_client("exporter", "exporter-secret", SYSTEM_ROLE_CLAIMS)
        iss.register_client("alice", "alice-secret", ALICE)
        iss.register_client("admin", "admin-secret", ADMIN)
        iss.register_client("nameless", "nameless-secret", NAMELESS)
        iss.register_client("cli", None, ALICE)
        yield iss


def token_endpoint(issuer: OIDCIssuer) -> str:
    """The issuer's token endpoint, from discovery."""
    url: str = requests.get(f"{issuer.url}/.well-known/openid-configuration").json()[
        "token_endpoint"
    ]
    return url


def client_token(issuer: OIDCIssuer, client_id: str) -> str:
    """An access token from the client_credentials grant."""
    form = {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_secret": f"{client_id}-secret",
    }
    resp = requests.post(token_endpoint(issuer), data=form)
    resp.raise_for_status()
    token: str = resp.json()["access_token"]
    return token


def scenario() -> tuple[Store, dict[str, str]]:
    """A small hand-made world whose route answers are worked out below."""
    store = Store()
    ids = {
        "d1": store.add_dataset(
            {
                "description": "visible",
                "jobs_submitted": 4,
                "tasks_submitted": 8,
                "tasks_per_job": 2,
                "group": "simprod",
                "username": "alice",
            }
        ),
        "d2": store.add_dataset(
            {
                "description": "restricted",
                "jobs_submitted": 1,
                "tasks_submitted": 1,
                "tasks_per_job": 1,
                "group": "simprod",
                "username": "bob",
                "status": "suspended",
                "auth_groups_read": [],
            }
        ),
    }
    d1 = ids["d1"]
    plan = [  # job status, (generate status, walltime, walltime_err), filter status
        ("processing", ("complete", 2.0, 1.0), "waiting"),
        ("processing", ("complete", 4.0, 0.0), "queued"),
        ("errors", ("failed", 0.0, 0.5), "suspended"),
    ]
    for job_index, (job_status, (gen_status, hours, err), filter_status) in enumerate(plan):
        job = store.add_job({"dataset_id": d1, "job_index": job_index, "status": job_status})
        base = {"dataset_id": d1, "job_id": job, "job_index": job_index, "depends": []}
        # filter first: name_status must order by task_index, not insertion
        store.add_task(
            {**base, "task_index": 1, "name": "filter", "requirements": {"gpu": 1}}
            | {"status": filter_status}
        )
        store.add_task(
            {**base, "task_index": 0, "name": "generate", "requirements": {"cpu": 1}}
            | {"status": gen_status, "walltime": hours, "walltime_err": err}
        )
    ids["grid"] = store.add_grid(
        {"host": "condor.example", "queues": {"q": "htcondor"}, "version": "3.2.43"}
    )
    store.set_config(d1, {"version": 3.2, "tasks": [{"name": "generate"}, {"name": "filter"}]})
    return store, ids


@pytest.fixture
def world(issuer: OIDCIssuer) -> Iterator[tuple[SimulatedIceProd, dict[str, str]]]:
    """The scenario served with auth by the module issuer."""
    store, ids = scenario()
    with SimulatedIceProd(store, issuer) as api:
        yield api, ids


def get(api: SimulatedIceProd, path: str, token: str | None, **params: str) -> requests.Response:
    """GET a path of the simulated API with an optional bearer token."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(api.url + path, headers=headers, params=params)
