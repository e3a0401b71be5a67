"""The API client against a real local HTTP server: retries, Retry-After, 401, timeouts, limits."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from iceprod_exporter.exposition.telemetry import Telemetry
from iceprod_exporter.source import client as api
from iceprod_exporter.source.auth import TokenManager
from iceprod_exporter.source.client import ApiClient, ApiError, RateLimiter
from tests.support.client import ROUTE, Sleeps, client, failures, get
from tests.support.scripted_http import Reply, ScriptedServer


def test_success_sends_the_bearer_token_and_counts_by_template(server: ScriptedServer) -> None:
    server.script[ROUTE] = [Reply(200, {"processing": 1})]
    registry = CollectorRegistry()
    assert get(client(server.url, registry)) == {"processing": 1}
    assert server.seen[0].authorization == "Bearer tok"
    assert (
        registry.get_sample_value(
            "iceprod_exporter_api_requests_total", {"endpoint": api.JOB_COUNTS}
        )
        == 1
    )


def test_503_is_retried_honouring_retry_after(server: ScriptedServer) -> None:
    overloaded = Reply(503, {"code": 503, "error": "server overloaded"}, {"Retry-After": "7"})
    server.script[ROUTE] = [overloaded, overloaded, Reply(200, {"complete": 3})]
    registry, sleeps = CollectorRegistry(), Sleeps()
    assert get(client(server.url, registry, sleeps)) == {"complete": 3}
    assert sleeps.calls == [7.0, 7.0]
    assert failures(registry, "overloaded") == 2


def test_retry_after_is_capped_and_retries_run_out(server: ScriptedServer) -> None:
    server.script[ROUTE] = [Reply(503, {"code": 503}, {"Retry-After": "21600"})]
    registry, sleeps = CollectorRegistry(), Sleeps()
    with pytest.raises(ApiError) as err:
        get(client(server.url, registry, sleeps, backoff_max=5.0))
    assert err.value.reason == "overloaded" and err.value.status == 503
    assert sleeps.calls == [5.0, 5.0] and len(server.seen) == 3


def test_500_backs_off_exponentially(server: ScriptedServer) -> None:
    server.script[ROUTE] = [Reply(500, {"code": 500, "error": "boom"})]
    sleeps = Sleeps()
    with pytest.raises(ApiError, match="server_error"):
        get(client(server.url, CollectorRegistry(), sleeps, retries=3))
    assert len(sleeps.calls) == 3
    assert 0.4 <= sleeps.calls[0] <= 0.6 and 1.6 <= sleeps.calls[2] <= 2.4


@pytest.mark.parametrize(
    ("status", "reason"), [(403, "forbidden"), (404, "not_found"), (400, "client_error")]
)
def test_answers_are_not_retried(server: ScriptedServer, status: int, reason: str) -> None:
    server.script[ROUTE] = [Reply(status, {"code": status, "error": "no"})]
    registry = CollectorRegistry()
    with pytest.raises(ApiError) as err:
        get(client(server.url, registry, Sleeps()))
    assert err.value.reason == reason and len(server.seen) == 1
    assert failures(registry, reason) == 1


def test_401_drops_the_token_and_retries_once(server: ScriptedServer) -> None:
    server.script[ROUTE] = [Reply(401, {"code": 401}), Reply(200, {"idle": 1})]
    assert get(client(server.url, CollectorRegistry(), Sleeps())) == {"idle": 1}
    assert len(server.seen) == 2 and server.seen[1].authorization == "Bearer tok"
    server.seen.clear()
    server.script[ROUTE] = [Reply(401, {"code": 401})]
    with pytest.raises(ApiError, match="unauthorized"):
        get(client(server.url, CollectorRegistry(), Sleeps()))
    assert len(server.seen) == 2, "only one retry after a 401"


def test_body_that_is_not_json(server: ScriptedServer) -> None:
    server.script[ROUTE] = [Reply(200, raw=b"<html>oops</html>")]
    registry = CollectorRegistry()
    with pytest.raises(ApiError, match="bad_response"):
        get(client(server.url, registry, Sleeps()))
    assert failures(registry, "bad_response") == 1


def test_connection_refused() -> None:
    with pytest.raises(ApiError, match="connection"):
        get(client("http://127.0.0.1:9", CollectorRegistry(), Sleeps(), retries=0))


def test_rate_limiter_allows_fractions() -> None:
    now = [0.0]
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(0.5, clock=lambda: now[0], sleep=sleep)

    async def run() -> None:
        for _ in range(4):
            await limiter.acquire()

    asyncio.run(run())
    assert now[0] == pytest.approx(6.0), "0.5 rps: 1 burst, then one every 2 s"


def test_401_fetches_a_new_token_from_the_issuer(server: ScriptedServer) -> None:
    from iceprod_exporter.source.auth import ClientCredentialsGrant, OpenIDProvider
    from iceprod_simulator import SYSTEM_ROLE_CLAIMS, OIDCIssuer

    server.script[ROUTE] = [Reply(401, {"code": 401}), Reply(200, {"queued": 2})]
    with OIDCIssuer() as issuer:
        issuer.register_client("exporter", "pw", SYSTEM_ROLE_CLAIMS)
        telemetry = Telemetry(CollectorRegistry())
        grant = ClientCredentialsGrant(OpenIDProvider(issuer.url, 5), "exporter", lambda: "pw")
        c = ApiClient(
            server.url,
            TokenManager(grant, telemetry, min_interval=0),
            telemetry,
            timeout=2,
            retries=0,
            backoff_max=1,
            concurrency=2,
            rate_limit=0,
        )
        assert get(c) == {"queued": 2}
        assert issuer.token_requests["client_credentials"] == 2, "a new grant after the 401"
    first, second = (seen.authorization for seen in server.seen)
    assert first != second and second == f"Bearer {issuer.issued[-1].token}"


def test_retries_never_pass_the_deadline(server: ScriptedServer) -> None:
    server.script[ROUTE] = [Reply(503, {}, headers={"Retry-After": "5"})]
    sleeps = Sleeps()
    c = client(server.url, CollectorRegistry(), sleeps, retries=5)

    async def run() -> None:
        deadline = asyncio.get_running_loop().time() + 2.0
        await c.get(api.JOB_COUNTS, deadline=deadline, dataset_id="d1")

    with pytest.raises(ApiError, match="overloaded"):
        try:
            asyncio.run(run())
        finally:
            c.close()
    assert sleeps.calls == [], "a 5 s Retry-After would end past the 2 s deadline"
    assert len(server.seen) == 1


def test_a_dataset_id_cannot_steer_the_request_to_another_route(server: ScriptedServer) -> None:
    hostile = "../../grids?x#"
    server.script["/datasets/..%2F..%2Fgrids%3Fx%23/job_counts/status"] = [Reply(200, {})]
    c = client(server.url, CollectorRegistry())

    async def run() -> object:
        try:
            return await c.get(api.JOB_COUNTS, dataset_id=hostile)
        finally:
            c.close()

    assert asyncio.run(run()) == {}
    assert [s.path for s in server.seen] == ["/datasets/..%2F..%2Fgrids%3Fx%23/job_counts/status"]
