"""A hostile IceProd and issuer on 127.0.0.1: no single call they answer wedges or fools the client.

Each upstream misbehaves over a real socket: it drips, stalls after the headers, sends an endless
chunked body or a gzip bomb, redirects the secret or the token elsewhere, hands out tokens that
are expired on arrival, or answers with objects that make a library warn once each.
"""

from __future__ import annotations

import asyncio
import io
import json
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from iceprod_exporter import logs
from iceprod_exporter.exposition.telemetry import Telemetry
from iceprod_exporter.source.auth import (
    ClientCredentialsGrant,
    OpenIDProvider,
    TokenError,
    TokenManager,
)
from iceprod_exporter.source.client import ApiError
from iceprod_exporter.source.labels import Reason
from iceprod_simulator import (
    SYSTEM_ROLE_CLAIMS,
    OIDCIssuer,
)
from tests.support.client import ROUTE, failures
from tests.support.hostile import SECRET, api_client, run_calls
from tests.support.scripted_http import Reply, ScriptedServer


@pytest.fixture
def elsewhere() -> Iterator[ScriptedServer]:
    """Another origin: nothing may ever reach it."""
    with ScriptedServer() as s:
        yield s


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


def test_library_lines_are_rate_limited_per_call_site_and_count_what_they_held_back() -> None:
    now = [0.0]
    limiter = logs.CallSiteLimiter(window=60.0, clock=lambda: now[0])
    assert [limiter.admit("a") for _ in range(1200)] == [0] + [None] * 1199
    assert limiter.admit("b") == 0, "another call site has its own budget"
    now[0] = 60.0
    assert limiter.admit("a") == 1199, "the next line says how many were held back"


#: discovery documents naming another origin, by the realm's own URL and the other origin's
LOGIN_CASES: dict[str, tuple[Callable[[str, str], dict[str, str]], str]] = {
    "issuer elsewhere": (
        lambda own, other: {"issuer": other + REALM, "token_endpoint": other + REALM + "/token"},
        "oauth_url: OpenID discovery: its issuer is not oauth_url",
    ),
    "device endpoint elsewhere": (
        lambda own, other: {
            "issuer": own,
            "token_endpoint": own + "/token",
            "device_authorization_endpoint": other + "/device",
        },
        "device_authorization_endpoint not on oauth_url's origin",
    ),
}


@pytest.mark.parametrize("case", LOGIN_CASES)
def test_login_sends_nothing_to_another_origin(
    case: str,
    server: ScriptedServer,
    elsewhere: ScriptedServer,
    tmp_path: Path,
    log_stream: io.StringIO,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from iceprod_exporter.cli import main

    document, message = LOGIN_CASES[case]
    own = server.url + REALM
    server.script[DISCOVERY] = [Reply(200, document(own, elsewhere.url))]
    argv = ["login", "--oauth-url", own, "--refresh-token-file", str(tmp_path / "t")]
    assert main(argv) == 2  # log_stream: the CLI's log set-up is undone afterwards
    assert message in capsys.readouterr().err
    assert elsewhere.seen == [] and not (tmp_path / "t").exists()
