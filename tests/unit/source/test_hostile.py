"""A hostile IceProd and issuer on 127.0.0.1: no single call they answer wedges or fools the client.

Each upstream misbehaves over a real socket: it drips, stalls after the headers, sends an endless
chunked body or a gzip bomb, redirects the secret or the token elsewhere, hands out tokens that
are expired on arrival, or answers with objects that make a library warn once each.
"""

from __future__ import annotations

import asyncio
import gc
import io
import itertools
import json
import logging
import time
import tracemalloc
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from iceprod_exporter import logs
from iceprod_exporter.exposition.telemetry import Telemetry
from iceprod_exporter.source.auth import (
    ClientCredentialsGrant,
    OpenIDProvider,
    StaticTokenGrant,
    TokenError,
    TokenManager,
)
from iceprod_exporter.source.client import ApiClient, ApiError
from iceprod_exporter.source.labels import Endpoint, Reason
from iceprod_exporter.source.transport import Transport
from iceprod_simulator import (
    SYSTEM_ROLE_CLAIMS,
    OIDCIssuer,
)
from tests.support.client import ROUTE
from tests.support.exporter import wait_for
from tests.support.hostile import SECRET
from tests.support.scripted_http import Reply, ScriptedServer, threads_outside_servers

MIB = 1024 * 1024


@pytest.fixture
def elsewhere() -> Iterator[ScriptedServer]:
    """Another origin: nothing may ever reach it."""
    with ScriptedServer() as s:
        yield s


def api_client(url: str, registry: CollectorRegistry, **kw: Any) -> ApiClient:
    telemetry = Telemetry(registry)
    options: dict[str, Any] = {
        "timeout": 2.0,
        "retries": 0,
        "backoff_max": 1.0,
        "concurrency": 4,
        "rate_limit": 0.0,
        **kw,
    }
    return ApiClient(
        url, TokenManager(StaticTokenGrant("tok"), telemetry, min_interval=0), telemetry, **options
    )


def run_calls(c: ApiClient, calls: int = 1, route: str = "d1") -> list[Any]:
    """``calls`` GETs of one route at once; results or the ApiErrors."""

    async def run() -> list[Any]:
        try:
            return await asyncio.gather(
                *(c.get(Endpoint.JOB_COUNTS, dataset_id=route) for _ in range(calls)),
                return_exceptions=True,
            )
        finally:
            c.close()

    return asyncio.run(run())


def failures(registry: CollectorRegistry, reason: str) -> float:
    value = registry.get_sample_value(
        "iceprod_exporter_api_request_failures_total",
        {"endpoint": Endpoint.JOB_COUNTS, "reason": reason},
    )
    return value or 0.0


def peak_memory(call: Callable[[], Any]) -> tuple[Any, float]:
    """What ``call`` returned and the most Python memory it held at once, in MiB."""
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1] / MIB
    finally:
        tracemalloc.stop()


def endless_chunks() -> Iterator[bytes]:
    return itertools.repeat(b"[" + b"0," * 32767, 100_000)  # 6 GiB: ends only if nobody reads


def gzip_bomb(inflated_gib: int = 5) -> bytes:
    """About 5 MiB of one gzip member that inflates to ``inflated_gib`` GiB of zeros.

    After a full flush deflate starts afresh, so each further MiB of zeros compresses to the
    same bytes: they are repeated rather than compressed 5,000 times.
    """
    zeros = bytes(MIB)
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    first = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    again = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    return first + again * (inflated_gib * 1024 - 1) + deflate.flush()


REALM = "/realms/x"


DISCOVERY = REALM + "/.well-known/openid-configuration"


def discovery(issuer: str, token_endpoint: str) -> Reply:
    return Reply(200, {"issuer": issuer, "token_endpoint": token_endpoint})


def grant_against(realm: ScriptedServer) -> TokenError:
    provider = OpenIDProvider(realm.url + REALM, timeout=2.0)
    grant = ClientCredentialsGrant(provider, "exporter", lambda: SECRET)
    tokens = TokenManager(grant, Telemetry(CollectorRegistry()), min_interval=0)
    with pytest.raises(TokenError) as err:
        asyncio.run(tokens.ensure_fresh())
    assert SECRET not in str(err.value)
    return err.value


def jsonclass_flood(objects: int = 1200) -> dict[str, Any]:
    """What IceProd may hold in a field the exporter ignores: rest-tools warns once per object."""
    flood = [{"__jsonclass__": ["no_such_class", f"value {i}"]} for i in range(objects)]
    return {"processing": 3, "ignored": flood}


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """The CLI's log set-up writing to a buffer; the test process's set-up is restored after."""
    root = logging.getLogger()
    handlers, level, showwarning = root.handlers[:], root.level, warnings.showwarning
    stream = io.StringIO()
    logs.configure("info", logs.LogFormat.JSON, stream)
    try:
        yield stream
    finally:
        root.handlers[:], warnings.showwarning = handlers, showwarning
        root.setLevel(level)
        structlog.reset_defaults()


@pytest.mark.parametrize(
    "reply",
    [Reply(200, {"x": "y" * 64}, drip=0.05), Reply(200, {"x": 1}, stall=True)],
    ids=["drip", "silence-after-headers"],
)
def test_a_call_ends_at_its_timeout_whatever_the_server_does(
    server: ScriptedServer, reply: Reply
) -> None:
    server.script[ROUTE] = [reply]
    registry = CollectorRegistry()
    threads = threads_outside_servers()
    started = time.monotonic()
    [error] = run_calls(api_client(server.url, registry, timeout=0.3))
    assert isinstance(error, ApiError) and error.reason == Reason.TIMEOUT
    assert time.monotonic() - started < 1.2, "the timeout is a deadline, not per read (3 s)"
    wait_for(lambda: server.hung_up == 1 and server.in_flight == 0, 2, "the socket closed")
    assert threads_outside_servers() == threads, "no thread is left waiting on the server"
    assert failures(registry, "timeout") == 1


def test_eight_dripping_calls_leave_nothing_behind_and_the_next_call_flows(
    server: ScriptedServer,
) -> None:
    server.script["/datasets/*"] = [Reply(200, {"x": "y" * 64}, drip=0.05)]
    c = api_client(server.url, CollectorRegistry(), timeout=0.3, concurrency=8)
    assert {e.reason for e in run_calls(c, 8)} == {Reason.TIMEOUT}
    wait_for(lambda: server.in_flight == 0, 2, "every dripping socket closed")
    server.script["/datasets/*"] = [Reply(200, {"processing": 1})]
    assert run_calls(c, 8) == [{"processing": 1}] * 8, "healed: every slot is free again"


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, raw=b"{}", length=2 * 1024 * MIB),
        Reply(200, chunks=endless_chunks),
        Reply(200, raw=gzip_bomb(), headers={"Content-Encoding": "gzip"}),
    ],
    ids=["2-GiB-announced", "endless-chunked", "gzip-5-MiB-to-5-GiB"],
)
def test_a_body_over_the_cap_fails_too_large_with_memory_bounded(
    server: ScriptedServer, reply: Reply
) -> None:
    server.script[ROUTE] = [reply]
    registry = CollectorRegistry()
    limit = 16 * MIB  # a quarter of the default: the same code, a quarter of the bytes
    c = api_client(server.url, registry, timeout=10.0, max_response_size=limit)
    with capture_logs() as events:
        [error], peak = peak_memory(lambda: run_calls(c, 1))
        run_calls(c, 2)
    assert isinstance(error, ApiError) and error.reason == Reason.TOO_LARGE
    assert peak < limit / MIB + 16, f"held {peak:.0f} MiB for a {limit / MIB:.0f} MiB cap"
    assert failures(registry, "too_large") == 3
    logged = [e["event"] for e in events if e["event"].startswith("api.")]
    assert logged == ["api.response_too_large"], "logged once"
    wait_for(lambda: server.in_flight == 0, 5, "the server to see the sockets closed")


def test_a_small_gzip_body_is_read() -> None:
    with ScriptedServer() as server:
        body = zlib.compress(json.dumps({"idle": 4}).encode(), wbits=31)
        server.script[ROUTE] = [Reply(200, raw=body, headers={"Content-Encoding": "gzip"})]
        assert run_calls(api_client(server.url, CollectorRegistry())) == [{"idle": 4}]


def test_api_redirect_to_another_origin_is_refused(
    server: ScriptedServer, elsewhere: ScriptedServer
) -> None:
    server.script[ROUTE] = [Reply(302, {}, headers={"Location": elsewhere.url + ROUTE})]
    registry = CollectorRegistry()
    [error] = run_calls(api_client(server.url, registry))
    assert isinstance(error, ApiError) and error.reason == Reason.REDIRECT
    assert elsewhere.seen == [] and failures(registry, "redirect") == 1


def test_api_redirect_on_the_same_origin_is_followed_a_few_times(server: ScriptedServer) -> None:
    server.script[ROUTE] = [Reply(307, {}, headers={"Location": "/v2" + ROUTE})]
    server.script["/v2" + ROUTE] = [Reply(200, {"queued": 1})]
    assert run_calls(api_client(server.url, CollectorRegistry())) == [{"queued": 1}]
    assert [s.authorization for s in server.seen] == ["Bearer tok"] * 2
    server.script["/v2" + ROUTE] = [Reply(308, {}, headers={"Location": ROUTE})]
    [error] = run_calls(api_client(server.url, CollectorRegistry()))
    assert isinstance(error, ApiError) and error.reason == Reason.REDIRECT, "a loop ends"


@pytest.mark.parametrize(
    ("hostile", "reason"),
    [
        ("discovery redirected", Reason.REDIRECT),
        ("issuer is another origin", Reason.BAD_RESPONSE),
        ("token endpoint on another origin", Reason.REDIRECT),
        ("token endpoint redirects", Reason.REDIRECT),
    ],
)
def test_the_secret_never_leaves_the_issuers_origin(
    server: ScriptedServer, elsewhere: ScriptedServer, hostile: str, reason: Reason
) -> None:
    own, other = server.url + REALM, elsewhere.url + REALM
    token = Reply(200, {"access_token": "t", "expires_in": 60})
    elsewhere.script[DISCOVERY] = [discovery(other, other + "/token")]
    elsewhere.script[REALM + "/token"] = [token]
    server.script[DISCOVERY] = [discovery(own, own + "/token")]
    server.script[REALM + "/token"] = [token]
    if hostile == "discovery redirected":
        server.script[DISCOVERY] = [Reply(302, {}, headers={"Location": elsewhere.url + DISCOVERY})]
    elif hostile == "issuer is another origin":
        server.script[DISCOVERY] = [discovery(other, own + "/token")]
    elif hostile == "token endpoint on another origin":
        server.script[DISCOVERY] = [discovery(own, other + "/token")]
    else:
        server.script[REALM + "/token"] = [Reply(307, {}, headers={"Location": other + "/token"})]
    assert grant_against(server).reason == reason
    assert elsewhere.seen == [], "nothing, secret or not, reached the other origin"
    posts = [s for s in server.seen if s.method == "POST"]
    assert len(posts) == (1 if hostile == "token endpoint redirects" else 0)


def test_a_token_that_could_end_a_header_line_is_refused(server: ScriptedServer) -> None:
    own = server.url + REALM
    server.script[DISCOVERY] = [discovery(own, own + "/token")]
    server.script[REALM + "/token"] = [Reply(200, {"access_token": "t\r\nX-Evil: 1"})]
    assert grant_against(server).reason == Reason.BAD_RESPONSE


def test_login_refuses_a_realm_whose_discovery_points_elsewhere(
    server: ScriptedServer,
    elsewhere: ScriptedServer,
    tmp_path: Path,
    log_stream: io.StringIO,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from iceprod_exporter.cli import main

    other = elsewhere.url + REALM
    server.script[DISCOVERY] = [discovery(other, other + "/token")]
    argv = ["login", "--oauth-url", server.url + REALM, "--refresh-token-file", str(tmp_path / "t")]
    assert main(argv) == 2  # log_stream: the CLI's log set-up is undone afterwards
    assert "oauth_url: OpenID discovery: its issuer is not oauth_url" in capsys.readouterr().err
    assert elsewhere.seen == [] and not (tmp_path / "t").exists()


@pytest.mark.parametrize(
    ("ttl", "offset"), [(0, 0.0), (300, -3600.0)], ids=["expires_in-0", "exp-past"]
)
def test_a_token_expired_on_arrival_fails_expired_with_a_clock_hint(
    ttl: float, offset: float
) -> None:
    with OIDCIssuer(token_ttl=ttl) as issuer:
        issuer.register_client("exporter", SECRET, SYSTEM_ROLE_CLAIMS)
        issuer.clock_offset = offset
        registry = CollectorRegistry()
        grant = ClientCredentialsGrant(OpenIDProvider(issuer.url, 2), "exporter", lambda: SECRET)
        tokens = TokenManager(grant, Telemetry(registry))
        with capture_logs() as events, pytest.raises(TokenError) as err:
            asyncio.run(tokens.ensure_fresh())
    assert err.value.reason == Reason.EXPIRED
    [event] = events
    assert event["reason"] == "expired" and "clock" in event["hint"]
    labels = {"reason": "expired"}
    assert registry.get_sample_value("iceprod_exporter_token_refresh_failures_total", labels) == 1


def test_a_jsonclass_flood_writes_no_line_and_a_library_at_most_one(
    server: ScriptedServer, log_stream: io.StringIO
) -> None:
    from rest_tools.utils.json_util import json_decode

    server.script[ROUTE] = [Reply(200, jsonclass_flood())]
    for _ in range(3):  # three polls' worth
        [body] = run_calls(api_client(server.url, CollectorRegistry()))
        assert body["processing"] == 3
    assert log_stream.getvalue() == "", "decoded with the standard decoder: nothing to say"
    raw = json.dumps(jsonclass_flood())
    for _ in range(3):  # rest-tools' own decoder: 1,200 warnings with tracebacks each time
        json_decode(raw)
        warnings.warn("a library warning in a loop", stacklevel=1)
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    assert [line["logger"] for line in lines] == ["rest_tools.utils.json_util", "py.warnings"]
    assert all(line["event"] == "library.log" for line in lines)


def test_aiohttp_and_asyncio_complaints_are_rate_limited_too(
    server: ScriptedServer, log_stream: io.StringIO
) -> None:
    server.script[ROUTE] = [Reply(200, {"processing": 1})]
    for _ in range(20):  # a pool left open 20 times: asyncio reports its session and connector
        transport = Transport(max_body=1024, connections=1)
        asyncio.run(transport.fetch(server.url + ROUTE, timeout=2.0))
        del transport
        gc.collect()
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    by_logger = Counter(line["logger"] for line in lines)
    assert by_logger["asyncio"] == 1, "40 complaints, one call site: one line"
    assert max(by_logger.values()) == 1, by_logger


def test_library_lines_are_rate_limited_per_call_site_and_count_what_they_held_back() -> None:
    now = [0.0]
    limiter = logs.RateLimiter(window=60.0, clock=lambda: now[0])
    assert [limiter.admit("a") for _ in range(1200)] == [0] + [None] * 1199
    assert limiter.admit("b") == 0, "another call site has its own budget"
    now[0] = 60.0
    assert limiter.admit("a") == 1199, "the next line says how many were held back"
