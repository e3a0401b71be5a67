"""The simulated IceProd API and the local OIDC issuer, over real HTTP on 127.0.0.1."""

import http.client
import json
import math
import time

import jwt
import pytest
import requests
from rest_tools.client import ClientCredentialsAuth, DeviceGrantAuth, OpenIDRestClient, RestClient

from iceprod_exporter.model.snapshot import DATASET_STATUSES, TASK_STATUSES
from iceprod_simulator import (
    SYSTEM_ROLE_CLAIMS,
    DatasetFault,
    OIDCIssuer,
    SimulatedIceProd,
    Simulation,
    Store,
    build_store,
)
from tests.support.simulator import (
    ALICE,
    client_token,
    get,
    scenario,
    token_endpoint,
)

MISSING = "0" * 32


JSON_TYPE = "application/json; charset=UTF-8"


def summary(store: Store) -> dict[str, tuple[str, int, int, int]]:
    """Per dataset: status, jobs_submitted, materialized jobs, complete jobs."""
    return {
        d: (
            doc["status"],
            doc["jobs_submitted"],
            len(store.jobs_of(d)),
            sum(j["status"] == "complete" for j in store.jobs_of(d)),
        )
        for d, doc in store.datasets.items()
    }


def test_discovery_and_jwks(issuer: OIDCIssuer) -> None:
    """Discovery names the endpoints; the JWKS holds the kid that signs access tokens."""
    config = requests.get(f"{issuer.url}/.well-known/openid-configuration").json()
    assert config["issuer"] == issuer.url
    assert config["token_endpoint"].startswith(issuer.url)
    assert "device_authorization_endpoint" in config
    keys = jwt.PyJWKSet.from_dict(requests.get(config["jwks_uri"]).json()).keys
    token = client_token(issuer, "exporter")
    assert [k.key_id for k in keys] == [jwt.get_unverified_header(token)["kid"]]


def test_client_credentials_token_claims(issuer: OIDCIssuer) -> None:
    """Access tokens carry integer iat/nbf/exp, iss, aud, jti and the client's claims."""
    before = issuer.token_requests["client_credentials"]
    token = client_token(issuer, "exporter")
    claims = issuer.validate(token)
    assert claims["iss"] == issuer.url
    assert claims["aud"] == "iceprod"
    assert claims["resource_access"] == SYSTEM_ROLE_CLAIMS["resource_access"]
    assert all(isinstance(claims[k], int) for k in ("iat", "nbf", "exp"))
    assert claims["exp"] - claims["iat"] == 300
    assert issuer.issued[-1].jti == claims["jti"]
    assert issuer.issued[-1].token == token
    assert issuer.token_requests["client_credentials"] == before + 1


def test_invalid_client(issuer: OIDCIssuer) -> None:
    """A wrong secret or an unknown client gets 401 invalid_client."""
    for client_id, secret in (("exporter", "wrong"), ("nobody", "x")):
        form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
        resp = requests.post(token_endpoint(issuer), data=form)
        assert resp.status_code == 401
        assert resp.json()["error"] == "invalid_client"


def test_refresh_tokens_rotate(issuer: OIDCIssuer) -> None:
    """Each refresh returns a new refresh token; the spent one is then invalid_grant."""
    old = issuer.issue_refresh_token("cli")
    header = jwt.get_unverified_header(old)
    assert header["alg"] == "HS256"
    assert header["kid"] not in [k["kid"] for k in issuer.jwks()["keys"]]
    form = {"grant_type": "refresh_token", "client_id": "cli", "refresh_token": old}
    first = requests.post(token_endpoint(issuer), data=form)
    assert first.status_code == 200
    new = first.json()["refresh_token"]
    assert new != old
    issuer.validate(first.json()["access_token"])
    reused = requests.post(token_endpoint(issuer), data=form)
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant"
    form["refresh_token"] = new
    assert requests.post(token_endpoint(issuer), data=form).status_code == 200


def test_refresh_for_confidential_client_needs_basic_secret(issuer: OIDCIssuer) -> None:
    """A confidential client refreshes with its secret in HTTP Basic, not without."""
    refresh = issuer.issue_refresh_token("exporter")
    form = {"grant_type": "refresh_token", "client_id": "exporter", "refresh_token": refresh}
    assert requests.post(token_endpoint(issuer), data=form).status_code == 401
    resp = requests.post(token_endpoint(issuer), data=form, auth=("exporter", "exporter-secret"))
    assert resp.status_code == 200


def test_device_flow_pending_then_approved(issuer: OIDCIssuer) -> None:
    """The device grant answers authorization_pending until the user code is approved."""
    config = requests.get(f"{issuer.url}/.well-known/openid-configuration").json()
    device = requests.post(
        config["device_authorization_endpoint"],
        data={"client_id": "cli", "scope": "offline_access"},
    ).json()
    form = {
        "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
        "client_id": "cli",
        "device_code": device["device_code"],
    }
    pending = requests.post(config["token_endpoint"], data=form)
    assert (pending.status_code, pending.json()) == (400, {"error": "authorization_pending"})
    issuer.approve_device(device["user_code"])
    tokens = requests.post(config["token_endpoint"], data=form).json()
    assert issuer.validate(tokens["access_token"])["preferred_username"] == "alice"
    assert "refresh_token" in tokens
    assert requests.post(config["token_endpoint"], data=form).json()["error"] == "invalid_grant"


def test_expiry_and_leeway(
    issuer: OIDCIssuer, world: tuple[SimulatedIceProd, dict[str, str]]
) -> None:
    """An expired token fails issuer.validate; the API still takes it within 60 s of leeway."""
    api, _ = world
    issuer.token_ttl = 0
    try:
        just_expired = client_token(issuer, "exporter")
        issuer.token_ttl = -61
        long_expired = client_token(issuer, "exporter")
    finally:
        issuer.token_ttl = 300
    with pytest.raises(jwt.ExpiredSignatureError):
        issuer.validate(just_expired)
    assert issuer.validate(just_expired, leeway=60)["azp"] == "exporter"
    assert get(api, "/grids", just_expired).status_code == 200
    resp = get(api, "/grids", long_expired)
    assert (resp.status_code, resp.json()) == (403, {"code": 403, "error": "authentication failed"})
    assert api.records.expired_token_requests() == 2
    assert api.records.tokens()[just_expired].expired_uses == 1


def test_issuer_delay_and_failure_knobs(issuer: OIDCIssuer) -> None:
    """The delay knob slows token answers; fail_status answers temporarily_unavailable."""
    issuer.delay = 0.2
    start = time.monotonic()
    client_token(issuer, "exporter")
    assert time.monotonic() - start >= 0.2
    issuer.delay = 0.0
    issuer.fail_status = 503
    try:
        form = {"grant_type": "client_credentials", "client_id": "exporter", "client_secret": "x"}
        resp = requests.post(token_endpoint(issuer), data=form)
    finally:
        issuer.fail_status = None
    assert (resp.status_code, resp.json()) == (503, {"error": "temporarily_unavailable"})


def test_issuer_restarts_on_same_port(issuer: OIDCIssuer) -> None:
    """stop() refuses connections; start() serves the same URL with the same keys."""
    url = issuer.url
    token = client_token(issuer, "exporter")
    issuer.stop()
    try:
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{url}/.well-known/openid-configuration")
    finally:
        issuer.start()
    assert issuer.url == url
    issuer.validate(token)


def test_rest_tools_client_credentials(
    issuer: OIDCIssuer, world: tuple[SimulatedIceProd, dict[str, str]]
) -> None:
    """ClientCredentialsAuth discovers the issuer and reads the API with a system token."""
    api, ids = world
    client = ClientCredentialsAuth(
        api.url, token_url=issuer.url, client_id="exporter", client_secret="exporter-secret"
    )
    assert client.request_seq("GET", f"/datasets/{ids['d1']}/job_counts/status") == {
        "processing": 2,
        "errors": 1,
    }
    rc = RestClient(api.url, token=lambda: client_token(issuer, "exporter"), retries=0)
    assert set(rc.request_seq("GET", "/grids")) == {ids["grid"]}


def test_rest_tools_refresh_and_device_clients(
    issuer: OIDCIssuer, world: tuple[SimulatedIceProd, dict[str, str]]
) -> None:
    """OpenIDRestClient rotates refresh tokens; DeviceGrantAuth completes when auto-approved."""
    api, ids = world
    rotated: list[str | bytes | None] = []
    client = OpenIDRestClient(
        api.url,
        token_url=issuer.url,
        refresh_token=issuer.issue_refresh_token("cli"),
        client_id="cli",
        update_func=lambda access, refresh: rotated.append(refresh),
    )
    assert set(client.request_seq("GET", "/datasets")) == {ids["d1"]}  # alice cannot see d2
    assert len(set(rotated)) == len(rotated) >= 2
    issuer.auto_approve_devices = True
    issuer.device_interval = 0
    try:
        device_client = DeviceGrantAuth(api.url, token_url=issuer.url, client_id="cli")
    finally:
        issuer.auto_approve_devices = False
        issuer.device_interval = 5
    assert set(device_client.request_seq("GET", "/datasets")) == {ids["d1"]}


def test_healthz_needs_no_token(world: tuple[SimulatedIceProd, dict[str, str]]) -> None:
    """/healthz is a plain tornado handler answering {}."""
    api, _ = world
    resp = get(api, "/healthz", None)
    assert (resp.status_code, resp.text) == (200, "{}")
    assert resp.headers["Server"].startswith("TornadoServer/")


def test_dataset_routes_shapes(
    issuer: OIDCIssuer, world: tuple[SimulatedIceProd, dict[str, str]]
) -> None:
    """Dataset list, projection, document and summaries look like the real server's."""
    api, ids = world
    token = client_token(issuer, "exporter")
    d1, d2 = ids["d1"], ids["d2"]
    assert get(api, "/datasets", token).json() == {d1: {"dataset_id": d1}, d2: {"dataset_id": d2}}
    listed = get(api, "/datasets", token, keys="status|dataset|nope", status="suspended").json()
    assert list(listed[d2]) == ["status", "dataset_id", "dataset"]  # document order
    doc = get(api, f"/datasets/{d1}", token).json()
    assert list(doc) == [
        "description",
        "jobs_submitted",
        "tasks_submitted",
        "tasks_per_job",
        "group",
        "username",
        "dataset_id",
        "dataset",
        "status",
        "start_date",
        "priority",
        "debug",
        "jobs_immutable",
        "truncated",
        "always_active",
    ]
    assert (doc["dataset"], doc["priority"], doc["truncated"]) == (1, 0.5, False)
    summaries = get(api, "/dataset_summaries/status", token)
    assert summaries.text == json.dumps({"processing": [d1], "suspended": [d2]})


def test_count_routes_bytes_and_order(
    issuer: OIDCIssuer, world: tuple[SimulatedIceProd, dict[str, str]]
) -> None:
    """Counts omit zeros and follow states.py order; name_status orders names by task_index."""
    api, ids = world
    token = client_token(issuer, "exporter")
    base = f"/datasets/{ids['d1']}"
    assert get(api, f"{base}/job_counts/status", token).text == '{"processing": 2, "errors": 1}'
    assert get(api, f"{base}/task_counts/status", token).text == (
        '{"waiting": 1, "queued": 1, "suspended": 1, "failed": 1, "complete": 2}'
    )
    assert get(api, f"{base}/task_counts/status", token, gpu="true").json() == {
        "waiting": 1,
        "queued": 1,
        "suspended": 1,
    }
    assert get(api, f"{base}/task_counts/status", token, gpu="false", status="complete").json() == {
        "complete": 2
    }
    # statuses inside a name come in $group key order, as on the reference server
    assert get(api, f"{base}/task_counts/name_status", token).text == (
        '{"generate": {"complete": 2, "failed": 1}, '
        '"filter": {"queued": 1, "suspended": 1, "waiting": 1}}'
    )
    assert get(api, "/task_counts/status", token).json() == {
        "waiting": 1,
        "queued": 1,
        "suspended": 1,
        "failed": 1,
        "complete": 2,
    }
    assert get(api, f"/datasets/{ids['d2']}/job_counts/status", token).text == "{}"


def test_task_stats(issuer: OIDCIssuer, world: tuple[SimulatedIceProd, dict[str, str]]) -> None:
    """task_stats aggregates complete tasks per name, keys in the real order."""
    api, ids = world
    stats = get(api, f"/datasets/{ids['d1']}/task_stats", client_token(issuer, "exporter")).json()
    assert list(stats) == ["generate"]
    generate = stats["generate"]
    assert list(generate) == [
        "count",
        "gpu",
        "total_hrs",
        "total_err_hrs",
        "avg_hrs",
        "stddev_hrs",
        "min_hrs",
        "max_hrs",
        "efficiency",
    ]
    assert generate["count"] == 2
    assert generate["gpu"] == 0
    assert (generate["total_hrs"], generate["total_err_hrs"]) == (6.0, 1.0)
    assert (generate["avg_hrs"], generate["min_hrs"], generate["max_hrs"]) == (3.0, 2.0, 4.0)
    assert generate["stddev_hrs"] == math.sqrt(2)
    assert generate["efficiency"] == 6.0 / 7.0


def test_grids_and_config(
    issuer: OIDCIssuer, world: tuple[SimulatedIceProd, dict[str, str]]
) -> None:
    """Grids are keyed by grid_id; a config comes back without its dataset_id."""
    api, ids = world
    token = client_token(issuer, "exporter")
    grids = get(api, "/grids", token).json()
    assert list(grids[ids["grid"]]) == [
        "host",
        "queues",
        "version",
        "grid_id",
        "start_date",
        "last_update",
        "debug",
    ]
    assert get(api, f"/grids/{ids['grid']}", token).json() == grids[ids["grid"]]
    config = get(api, f"/config/{ids['d1']}", token).json()
    assert config == {"version": 3.2, "tasks": [{"name": "generate"}, {"name": "filter"}]}
    missing = get(api, f"/config/{ids['d2']}", token)
    assert (missing.status_code, missing.json()) == (
        404,
        {"code": 404, "error": "Config not found"},
    )


def test_status_validation(
    issuer: OIDCIssuer, world: tuple[SimulatedIceProd, dict[str, str]]
) -> None:
    """Unknown statuses get 400 with the real reasons; a bad gpu value gets catch_error's 500."""
    api, ids = world
    token = client_token(issuer, "exporter")
    cases = [
        ("/datasets", {"status": "processing|truncated"}, 400, "unknown status"),
        (
            f"/datasets/{ids['d1']}/task_counts/status",
            {"status": "reset"},
            400,
            "Unknown task status",
        ),
        ("/task_counts/status", {"status": "idle|bogus"}, 400, "Unknown task status"),
        (
            f"/datasets/{ids['d1']}/task_counts/status",
            {"gpu": "maybe"},
            500,
            "Error in DatasetTaskCountsStatusHandler",
        ),
    ]
    for path, params, status, reason in cases:
        resp = get(api, path, token, **params)
        assert (resp.status_code, resp.text) == (
            status,
            json.dumps({"code": status, "error": reason}),
        )
        assert resp.reason == reason


def test_not_found_bodies(
    issuer: OIDCIssuer, world: tuple[SimulatedIceProd, dict[str, str]]
) -> None:
    """A missing dataset is a JSON 404; an unknown path is tornado's HTML 404."""
    api, _ = world
    token = client_token(issuer, "exporter")
    resp = get(api, f"/datasets/{MISSING}", token)
    assert (resp.status_code, resp.text) == (404, '{"code": 404, "error": "Dataset not found"}')
    assert resp.headers["Server"] == "IceProd/3.2.43"
    for path in ("/pilots", "/datasets/", "/datasets/not-hex"):
        html = get(api, path, token)
        assert html.status_code == 404
        assert html.headers["Content-Type"] == "text/html; charset=UTF-8"
        assert html.text == "<html><title>404: Not Found</title><body>404: Not Found</body></html>"


def test_success_headers_match_real_server(
    issuer: OIDCIssuer, world: tuple[SimulatedIceProd, dict[str, str]]
) -> None:
    """200s carry the no-store headers and an empty Server header; errors lose the former."""
    api, _ = world
    ok = get(api, "/grids", client_token(issuer, "exporter"))
    assert ok.headers["Server"] == ""
    assert ok.headers["Content-Type"] == JSON_TYPE
    assert ok.headers["Cache-Control"] == "no-store, no-cache, must-revalidate, max-age=0"
    denied = get(api, "/grids", None)
    assert denied.headers["Server"] == "IceProd/3.2.43"
    assert "Cache-Control" not in denied.headers


def test_roles_and_dataset_acls(
    issuer: OIDCIssuer, world: tuple[SimulatedIceProd, dict[str, str]]
) -> None:
    """System and admin see everything; a plain user gets 403s on global routes and ACLs."""
    api, ids = world
    system, alice, admin = (client_token(issuer, c) for c in ("exporter", "alice", "admin"))
    restricted = f"/datasets/{ids['d2']}/job_counts/status"

    def error(path: str, token: str | None) -> tuple[int, str]:
        resp = get(api, path, token)
        return resp.status_code, resp.json()["error"]

    assert error("/grids", None) == (403, "authentication failed")
    assert error("/grids", "not.a.jwt") == (403, "authentication failed")
    assert error("/grids", client_token(issuer, "nameless")) == (403, "authentication failed")
    assert error("/grids", alice) == (403, "authorization failed")
    assert error("/task_counts/status", alice) == (403, "authorization failed")
    assert error(restricted, alice) == (403, "authorization failed")
    assert error(f"/datasets/{MISSING}", alice) == (403, "attr not found")
    assert get(api, f"/datasets/{ids['d1']}/task_stats", alice).status_code == 200
    for token in (system, admin):
        assert get(api, restricted, token).status_code == 200
        assert set(get(api, "/datasets", token).json()) == {ids["d1"], ids["d2"]}
    assert set(get(api, "/datasets", alice).json()) == {ids["d1"]}
    assert get(api, "/dataset_summaries/status", alice).json() == {"processing": [ids["d1"]]}


def test_username_is_the_claim_as_given(
    issuer: OIDCIssuer, world: tuple[SimulatedIceProd, dict[str, str]]
) -> None:
    """IceProd's get_current_user takes preferred_username as it is: any truthy JSON value.

    Found by comparing with the real server (tests/integration/real_iceprod/test_exposition.py): a
    token whose preferred_username is a number still authenticates there; only a missing or empty
    one fails.
    """
    api, ids = world
    issuer.register_client("numbered", "numbered-secret", {**ALICE, "preferred_username": 7})
    issuer.register_client("empty", "empty-secret", {**ALICE, "preferred_username": ""})
    numbered, empty = client_token(issuer, "numbered"), client_token(issuer, "empty")
    assert get(api, "/datasets", numbered).json() == {ids["d1"]: {"dataset_id": ids["d1"]}}
    assert get(api, "/grids", numbered).json()["error"] == "authorization failed"
    assert get(api, "/datasets", empty).json()["error"] == "authentication failed"


def test_without_issuer_every_request_is_system() -> None:
    """With issuer=None the API needs no token and grants the system role."""
    store, ids = scenario()
    with SimulatedIceProd(store) as api:
        assert get(api, "/task_counts/status", None).status_code == 200
        assert get(api, f"/datasets/{ids['d2']}/job_counts/status", None).status_code == 200


def test_down_and_back_on_same_port(world: tuple[SimulatedIceProd, dict[str, str]]) -> None:
    """Going down refuses connections (pooled ones too); coming back keeps the URL."""
    api, _ = world
    session = requests.Session()
    session.headers["Authorization"] = "Bearer x"
    assert session.get(f"{api.url}/healthz").status_code == 200
    url = api.url
    api.down = True
    assert api.down
    with pytest.raises(requests.ConnectionError):
        session.get(f"{url}/healthz")
    api.down = False
    assert api.url == url
    assert session.get(f"{url}/healthz").status_code == 200


def test_delay_and_dataset_faults(
    issuer: OIDCIssuer, world: tuple[SimulatedIceProd, dict[str, str]]
) -> None:
    """The delay knob slows requests; dataset faults hit only routes with that dataset_id."""
    api, ids = world
    token = client_token(issuer, "exporter")
    api.faults.delay = 0.2
    start = time.monotonic()
    get(api, "/grids", token)
    assert time.monotonic() - start >= 0.2
    api.faults.delay = 0.0
    d1, d2 = ids["d1"], ids["d2"]
    api.faults.datasets[d1] = DatasetFault()
    api.faults.datasets[d2] = DatasetFault(body="<html>proxy error</html>")
    denied = get(api, f"/datasets/{d1}/job_counts/status", token)
    assert (denied.status_code, denied.json()["error"]) == (403, "authorization failed")
    garbled = get(api, f"/datasets/{d2}/task_counts/name_status", token)
    assert garbled.status_code == 200
    with pytest.raises(requests.JSONDecodeError):
        garbled.json()
    assert get(api, "/datasets", token).status_code == 200


def test_records_count_routes_and_tokens(
    issuer: OIDCIssuer, world: tuple[SimulatedIceProd, dict[str, str]]
) -> None:
    """Requests are counted per route template; tokens are kept with their exp."""
    api, ids = world
    token = client_token(issuer, "exporter")
    api.records.clear()
    for dataset_id in (ids["d1"], ids["d2"]):
        get(api, f"/datasets/{dataset_id}/job_counts/status", token)
    get(api, "/nowhere", None)
    assert api.records.request_counts() == {"/datasets/{dataset_id}/job_counts/status": 2, "*": 1}
    use = api.records.tokens()[token]
    assert (use.uses, use.expired_uses) == (2, 0)
    assert use.exp == issuer.validate(token)["exp"]


def test_keep_alive_connection_serves_many_requests(
    world: tuple[SimulatedIceProd, dict[str, str]],
) -> None:
    """One HTTP/1.1 connection carries many requests (the exporter polls thousands)."""
    api, _ = world
    conn = http.client.HTTPConnection("127.0.0.1", api.port)
    conn.connect()
    sock = conn.sock
    headers = {"Authorization": "Bearer " + "x"}
    for _ in range(200):
        conn.request("GET", "/healthz", headers=headers)
        assert conn.getresponse().read() == b"{}"
    assert conn.sock is sock
    conn.close()


def test_store_documents_follow_post_then_set() -> None:
    """A POST body gets the server's fields appended; a whole document is kept as given."""
    store = Store()
    body = {
        "dataset_id": "d",
        "job_id": "j",
        "task_index": 0,
        "job_index": 0,
        "name": "n",
        "depends": [],
        "requirements": {},
    }
    task = store.tasks[store.add_task(body)]
    assert list(task) == [
        *body,
        "task_id",
        "status_changed",
        "failures",
        "evictions",
        "walltime",
        "walltime_err",
        "walltime_err_n",
        "site",
        "status",
        "priority",
        "instance_id",
    ]
    task.update(walltime=1.5, extra=True)  # a later PATCH, as Mongo's $set orders it
    assert list(task)[11:] == [
        "walltime",
        "walltime_err",
        "walltime_err_n",
        "site",
        "status",
        "priority",
        "instance_id",
        "extra",
    ]
    whole = dict(reversed(list(task.items())))
    other = Store()
    assert list(other.tasks[other.add_task(whole)]) == list(whole)
    with pytest.raises(ValueError, match="missing key: job_index"):
        store.add_job({"dataset_id": "d"})


def test_build_store_mixes_statuses() -> None:
    """Generated worlds have every dataset and task status, GPU tasks and one truncated set."""
    store = build_store(60, seed=1)
    assert {d["status"] for d in store.datasets.values()} == set(DATASET_STATUSES)
    assert {t["status"] for t in store.tasks.values()} == set(TASK_STATUSES)
    assert [d["truncated"] for d in store.datasets.values()].count(True) == 1
    assert any(t["requirements"].get("gpu") for t in store.tasks.values())
    assert any(len(store.jobs_of(d)) < doc["jobs_submitted"] for d, doc in store.datasets.items())


def test_simulation_progresses_consistently() -> None:
    """Steps move tasks on, datasets complete, and counts never exceed what was submitted."""
    store = build_store(40, seed=3)
    start = summary(store)
    simulation = Simulation(store, seed=3)
    for _ in range(150):
        simulation.step()
    end = summary(store)
    assert end != start
    newly_complete = [d for d in start if start[d][0] == "processing" and end[d][0] == "complete"]
    assert newly_complete
    for dataset_id, doc in store.datasets.items():
        jobs = store.jobs_of(dataset_id)
        assert len(jobs) <= doc["jobs_submitted"]
        assert len(store.tasks_of(dataset_id)) == len(jobs) * doc["tasks_per_job"]
        if doc["status"] == "complete":
            assert all(j["status"] == "complete" for j in jobs)
    assert simulation.ticks == 150


def test_simulation_is_deterministic() -> None:
    """The same seed gives the same world after the same number of steps."""
    worlds = []
    for _ in range(2):
        store = build_store(20, seed=5)
        simulation = Simulation(store, seed=5)
        for _ in range(30):
            simulation.step()
        worlds.append((list(store.datasets), summary(store)))
    assert worlds[0] == worlds[1]


def test_paused_world_and_request_accounting(issuer: OIDCIssuer) -> None:
    """PUT /_simulator/paused stops the ticks; /_simulator/requests has counts and CPU."""
    store = build_store(10, seed=4)
    simulation = Simulation(store, seed=4)
    with SimulatedIceProd(store, issuer, simulation=simulation, tick_seconds=0.02) as api:
        paused = requests.put(api.url + "/_simulator/paused", data="true", timeout=10)
        assert paused.json() == {"paused": True}
        ticks = simulation.ticks
        time.sleep(0.2)
        assert simulation.ticks == ticks, "no tick while paused"
        token = client_token(issuer, "exporter")
        get(api, "/grids", token)
        ledger = requests.get(api.url + "/_simulator/requests", timeout=10).json()
        assert ledger["requests"]["/grids"] >= 1
        assert ledger["cpu_seconds"]["/grids"] > 0
        requests.put(api.url + "/_simulator/paused", data="false", timeout=10)
        wait = time.monotonic() + 5
        while simulation.ticks == ticks and time.monotonic() < wait:
            time.sleep(0.05)
        assert simulation.ticks > ticks, "ticking again"


def test_server_ticks_the_simulation(issuer: OIDCIssuer) -> None:
    """With tick_seconds the server steps the world in its own thread."""
    store = build_store(10, seed=4)
    simulation = Simulation(store, seed=4)
    with SimulatedIceProd(store, issuer, simulation=simulation, tick_seconds=0.02) as api:
        token = client_token(issuer, "exporter")
        first = get(api, "/task_counts/status", token).json()
        deadline = time.monotonic() + 5
        while simulation.ticks < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert get(api, "/task_counts/status", token).json() != first
