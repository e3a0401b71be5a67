"""A hostile IceProd and issuer over seconds: the grant rate, and the daemon through a drip.

The process tests run the daemon itself against a dripping API or token endpoint;
``HOSTILE_DRIP_SECONDS=300`` (``make soak-hostile``) makes the drip the issue's 5 minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import itertools
import json
import os
import signal
import subprocess
import time
import tracemalloc
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from iceprod_exporter.exposition.telemetry import Telemetry
from iceprod_exporter.source.auth import (
    ClientCredentialsGrant,
    OpenIDProvider,
    TokenManager,
)
from iceprod_exporter.source.client import ApiClient, ApiError
from iceprod_exporter.source.labels import Endpoint, Reason
from iceprod_exporter.source.transport import Transport
from iceprod_simulator import (
    SYSTEM_ROLE_CLAIMS,
    OIDCIssuer,
    SimulatedIceProd,
    Simulation,
    build_store,
)
from tests.support.client import ROUTE, failures
from tests.support.exporter import free_port, http_get, samples, start_exporter, wait_for
from tests.support.hostile import SECRET, api_client, run_calls
from tests.support.scripted_http import Reply, ScriptedServer, threads_outside_servers

DRIP_SECONDS = float(os.environ.get("HOSTILE_DRIP_SECONDS", "4"))


POLL = 2.0


def process_usage(pid: int) -> tuple[int, int, float]:
    """Threads, open sockets and resident MiB of a process (/proc)."""
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    sockets = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed while listed
            sockets += os.readlink(fd).startswith("socket:")
    return int(status["Threads"]), sockets, int(status["VmRSS"].split()[0]) / 1024


class Daemon:
    """``iceprod-exporter run`` against a scripted IceProd in front of the simulator."""

    def __init__(self, api: ScriptedServer, issuer: OIDCIssuer, log: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}/"
        env = {
            "PATH": os.environ["PATH"],
            "API_URL": api.url,
            "OAUTH_URL": issuer.url,
            "OAUTH_CLIENT_ID": "exporter",
            "OAUTH_CLIENT_SECRET": SECRET,
            "PROMETHEUS_PORT": self.url.rsplit(":", 1)[1].strip("/"),
            "ICEPROD_EXPORTER_LISTEN_ADDRESS": "127.0.0.1",
            "ICEPROD_EXPORTER_POLL_INTERVAL": str(POLL),
            "ICEPROD_EXPORTER_TIMEOUT": "1",
            "ICEPROD_EXPORTER_POLL_TIMEOUT": "3",
            "ICEPROD_EXPORTER_TOKEN_TIMEOUT": "1",
            "ICEPROD_EXPORTER_RETRIES": "0",
            "ICEPROD_EXPORTER_PROCESS_METRICS": "false",
        }
        self.log = log
        self.process = start_exporter(env, self.url, log)

    def value(self, name: str) -> float | None:
        status, body = http_get(self.url + "metrics")
        return samples(body.decode()).get((name, ())) if status == 200 else None

    def up_since(self, moment: float) -> bool:
        success = self.value("iceprod_exporter_last_successful_poll_timestamp_seconds")
        return self.value("iceprod_up") == 1 and (success or 0) > moment

    def terminate_within(self, seconds: float) -> float:
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(seconds)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(
                f"SIGTERM did not stop the exporter within {seconds:.0f}s"
            ) from None
        return time.monotonic() - started


@contextlib.contextmanager
def scripted_in_front(
    token_ttl: float, datasets: int, seed: int
) -> Iterator[tuple[ScriptedServer, OIDCIssuer]]:
    """A scripted server in front of a simulated IceProd (unscripted paths pass through)."""
    with OIDCIssuer(token_ttl=token_ttl) as issuer:
        issuer.register_client("exporter", SECRET, SYSTEM_ROLE_CLAIMS)
        store = build_store(datasets=datasets, seed=seed)
        with (
            SimulatedIceProd(store, issuer=issuer, simulation=Simulation(store, seed)) as iceprod,
            ScriptedServer() as api,
        ):
            api.upstream = iceprod.url
            yield api, issuer


@pytest.fixture
def upstreams() -> Iterator[tuple[ScriptedServer, OIDCIssuer]]:
    with scripted_in_front(token_ttl=300, datasets=6, seed=3) as stack:
        yield stack


def watch(daemon: Daemon, seconds: float) -> list[tuple[int, int, float]]:
    samples_ = []
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        samples_.append(process_usage(daemon.process.pid))
        time.sleep(0.5)
    return samples_


@pytest.mark.parametrize(("ttl", "offset"), [(300, -3600.0), (1, 0.0)], ids=["expired", "1s-life"])
def test_the_issuer_gets_at_most_one_request_a_second(ttl: float, offset: float) -> None:
    """Under tokens expired on arrival, or living 1 s, API calls do not become grants."""
    with OIDCIssuer(token_ttl=ttl) as issuer, ScriptedServer() as server:
        issuer.register_client("exporter", SECRET, SYSTEM_ROLE_CLAIMS)
        issuer.clock_offset = offset
        server.script[ROUTE] = [Reply(200, {})]
        telemetry = Telemetry(CollectorRegistry())
        grant = ClientCredentialsGrant(OpenIDProvider(issuer.url, 2), "exporter", lambda: SECRET)
        c = ApiClient(
            server.url,
            TokenManager(grant, telemetry),
            telemetry,
            timeout=2,
            retries=0,
            backoff_max=1,
            concurrency=4,
            rate_limit=0,
        )

        async def hammer() -> None:
            ends = asyncio.get_running_loop().time() + 3.0
            while asyncio.get_running_loop().time() < ends:
                with_errors = [c.get(Endpoint.JOB_COUNTS, dataset_id="d1") for _ in range(4)]
                await asyncio.gather(*with_errors, return_exceptions=True)
                await asyncio.sleep(0.01)
            c.close()

        asyncio.run(hammer())
        grants = issuer.token_requests["client_credentials"]
    assert 2 <= grants <= 4, f"{grants} grants in 3 s"


@pytest.mark.timeout(DRIP_SECONDS + 120)
def test_daemon_through_a_drip_stays_bounded_recovers_and_stops_on_sigterm(
    upstreams: tuple[ScriptedServer, OIDCIssuer], tmp_path: Path
) -> None:
    api, _ = upstreams
    daemon = Daemon(api, upstreams[1], tmp_path / "exporter.log")
    try:
        threads, sockets, rss = process_usage(daemon.process.pid)
        api.script["/datasets/*"] = [Reply(200, {"x": "y" * 4096}, drip=0.5)]
        usage = watch(daemon, DRIP_SECONDS)
        assert daemon.value("iceprod_up") == 0
        assert max(u[0] for u in usage) <= threads + 2, f"threads {usage}"
        assert max(u[1] for u in usage) <= sockets + 8 + 2, f"sockets {usage}"
        assert max(u[2] for u in usage) <= rss + 50, f"resident MiB {usage}"
        healed = time.time()
        seen = len(api.seen)
        del api.script["/datasets/*"]
        wait_for(
            lambda: any(s.path.startswith("/datasets/") for s in api.seen[seen:]),
            2 * POLL,
            "a request to IceProd within 2 poll intervals of it healing",
        )
        wait_for(lambda: daemon.up_since(healed), 2 * POLL + 3, "iceprod_up 1 again")
        api.script["/datasets/*"] = [Reply(200, {}, stall=True)]
        wait_for(lambda: api.in_flight > 0, 2 * POLL, "a poll hanging on IceProd")
        assert daemon.terminate_within(10) < 10
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait(10)


def test_daemon_through_a_dripping_token_endpoint_recovers_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    with scripted_in_front(token_ttl=4, datasets=3, seed=5) as (api, issuer):
        daemon = Daemon(api, issuer, tmp_path / "exporter.log")
        try:
            issuer.drip = 0.5  # every refresh from now on drips past token_timeout
            wait_for(lambda: daemon.value("iceprod_up") == 0, 10, "the token to run out")
            asked = sum(issuer.token_requests.values())
            healed = time.time()
            issuer.drip = 0.0
            wait_for(
                lambda: sum(issuer.token_requests.values()) > asked,
                2 * POLL,
                "a token request within 2 poll intervals of the issuer healing",
            )
            wait_for(lambda: daemon.up_since(healed), 3 * POLL, "iceprod_up 1 again")
            issuer.drip = 0.5
            issuer.token_ttl = 2
            wait_for(
                lambda: sum(issuer.token_requests.values()) > asked + 2,
                10,
                "a refresh dripping",
            )
            assert daemon.terminate_within(10) < 10
        finally:
            if daemon.process.poll() is None:
                daemon.process.kill()
                daemon.process.wait(10)


MIB = 1024 * 1024


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


def jsonclass_flood(objects: int = 1200) -> dict[str, Any]:
    """What IceProd may hold in a field the exporter ignores: rest-tools warns once per object."""
    flood = [{"__jsonclass__": ["no_such_class", f"value {i}"]} for i in range(objects)]
    return {"processing": 3, "ignored": flood}


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
