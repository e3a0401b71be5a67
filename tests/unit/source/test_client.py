"""The API client against a real local HTTP server: retries, Retry-After, 401, timeouts, limits."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry

from iceprod_exporter.exposition.telemetry import Telemetry
from iceprod_exporter.source import client as api
from iceprod_exporter.source.auth import TokenManager
from iceprod_exporter.source.client import ApiClient, ApiError, RateLimiter
from iceprod_exporter.source.labels import Reason
from tests.support.client import ROUTE, client
from tests.support.exporter import wait_for
from tests.support.scripted_http import Reply, ScriptedServer, threads_outside_servers


class Sleeps:
    """Records backoff sleeps instead of sleeping them."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def failures(registry: CollectorRegistry, reason: str, endpoint: str = api.JOB_COUNTS) -> float:
    value = registry.get_sample_value(
        "iceprod_exporter_api_request_failures_total", {"endpoint": endpoint, "reason": reason}
    )
    return value or 0.0


def get(c: ApiClient) -> object:
    async def run() -> object:
        try:
            return await c.get(api.JOB_COUNTS, dataset_id="d1")
        finally:
            c.close()

    return asyncio.run(run())


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


def test_hang_past_the_timeout_fails_in_bounded_time(server: ScriptedServer) -> None:
    server.script[ROUTE] = [Reply(200, {}, delay=5.0)]
    registry = CollectorRegistry()
    started = time.monotonic()
    with pytest.raises(ApiError) as err:
        get(client(server.url, registry, Sleeps(), timeout=0.5, retries=1))
    assert err.value.reason == "timeout"
    assert time.monotonic() - started < 1.5, "a timeout is not retried"
    assert failures(registry, "timeout") == 1


def test_connection_refused() -> None:
    with pytest.raises(ApiError, match="connection"):
        get(client("http://127.0.0.1:9", CollectorRegistry(), Sleeps(), retries=0))


def test_concurrency_cap_is_respected(server: ScriptedServer) -> None:
    for i in range(12):
        server.script[f"/datasets/d{i}/job_counts/status"] = [Reply(200, {}, delay=0.15)]
    c = client(server.url, CollectorRegistry(), concurrency=3)

    async def run() -> None:
        try:
            await asyncio.gather(*(c.get(api.JOB_COUNTS, dataset_id=f"d{i}") for i in range(12)))
        finally:
            c.close()

    asyncio.run(run())
    assert server.max_in_flight == 3


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


def test_a_hang_ends_at_the_timeout_and_frees_its_slot(server: ScriptedServer) -> None:
    """A hung call closes its socket at the timeout; queued calls then fail at the deadline.

    So a hang never piles up sockets, and no queued request waits out a timeout.
    """
    server.script[ROUTE] = [Reply(200, {}, stall=True)]
    c = client(server.url, CollectorRegistry(), Sleeps(), timeout=0.2, concurrency=2)
    threads = threads_outside_servers()

    async def run() -> tuple[list[object], float]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 0.5
        started = loop.time()
        calls = [c.get(api.JOB_COUNTS, deadline=deadline, dataset_id="d1") for _ in range(10)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        return results, loop.time() - started

    try:
        results, took = asyncio.run(run())
    finally:
        c.close()
    reasons = [r.reason for r in results if isinstance(r, ApiError)]
    assert len(reasons) == 10
    assert set(reasons) == {"timeout", "deadline"}
    assert reasons.count(Reason.DEADLINE) >= 2, "queued past the deadline: failed, never sent"
    assert len(server.seen) <= 2 * 3, "two slots, each free again after a 0.2 s timeout"
    assert took < 1.2
    wait_for(lambda: server.in_flight == 0, 2, "the server to see every socket closed")
    assert threads_outside_servers() == threads, "no thread is left waiting on the server"


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
