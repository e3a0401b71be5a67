"""The exporter against the real IceProd 3.2.43 REST server (tests/support/real_iceprod/README.md).

One local OIDC issuer with short-lived tokens, one real server, seeded once with
``real_iceprod.scenario.SCENARIO``. Expected values come from ``real_iceprod.expected``,
computed from the scenario alone. The exporter always runs as its real CLI in a subprocess:

1. ``once`` and ``run`` (scraped over HTTP) report every expected series and value;
2. ``run`` through a recording proxy across several token expiries: never down, no 401/403,
   no request with an expired token, the client secret nowhere in logs or pages;
3. the simulator, loaded with the same scenario, answers every request the exporter makes
   (and the error cases) exactly like the real server, modulo generated ids and dates;
4. compatibility mode matches IceProd's own ``dataset_monitor`` series for series;
5. a plain IceCube user token: readable datasets only, the IceProd-wide
   ``/task_counts/status`` a permission problem.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import jwt
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from iceprod_exporter.poll import parse as parse_module
from iceprod_exporter.poll.parse import timestamp
from iceprod_simulator import OIDCIssuer, SimulatedIceProd
from tests.support.exporter import free_port, http_get, run_once, start_exporter, wait_for
from tests.support.monitoring import listening_addresses
from tests.support.real_iceprod import expected
from tests.support.real_iceprod.expected import Labels, labels
from tests.support.real_iceprod.harness import ADMIN_CLAIMS, SYSTEM_CLAIMS, RealIceProd
from tests.support.real_iceprod.proxy import RecordingProxy
from tests.support.real_iceprod.scenario import SCENARIO
from tests.support.real_iceprod.seed import SeededScenario, seed_scenario
from tests.support.real_iceprod.sim_store import load_store

AUDIENCE = "iceprod"
#: access token lifetime: the exporter goes through several expiries in a few seconds
TOKEN_TTL = 4.0
EXPIRIES = 3
SYSTEM_CLIENT = "iceprod-exporter"
SYSTEM_SECRET = "exporter-Secret-3b9f1c0e7d5a"  # distinctive, to search logs and pages for
USER_CLIENT = "exporter-erin"
USER_SECRET = "erin-Secret-8e2d4c6a1f09"
# a plain IceCube member who submitted none of the scenario's datasets
PLAIN_USER_CLAIMS: dict[str, Any] = {
    "groups": ["/institutions/IceCube"],
    "preferred_username": "erin",
}
CLIENTS: dict[str, tuple[str, dict[str, Any]]] = {
    SYSTEM_CLIENT: (SYSTEM_SECRET, SYSTEM_CLAIMS),
    "seed-admin": ("seed-admin-secret", ADMIN_CLAIMS),
    USER_CLIENT: (USER_SECRET, PLAIN_USER_CLAIMS),
    # edge cases of the per-user checks, compared between the servers
    "submitter": ("submitter-secret", {**PLAIN_USER_CLAIMS, "preferred_username": "frank"}),
    "numbered": ("numbered-secret", {**PLAIN_USER_CLAIMS, "preferred_username": 7}),
    "nameless": ("nameless-secret", {**PLAIN_USER_CLAIMS, "preferred_username": ""}),
    "outsider": (
        "outsider-secret",
        {"groups": ["/posix/simprod-submit"], "preferred_username": "olga"},
    ),
}
#: the exporter's discovery query (parse.DATASET_KEYS), spelled out so a change shows here
DATASET_KEYS = (
    "dataset_id|dataset|status|description|group|username|jobs_submitted|"
    "tasks_submitted|priority|start_date|truncated|always_active"
)
#: the IceProd-wide active tasks by resource, as the exporter asks (status index, gpu filter)
ACTIVE_TASKS = tuple(
    f"/task_counts/status?status=idle|waiting|queued|processing&gpu={gpu}"
    for gpu in ("true", "false")
)
PER_DATASET_ROUTES = ("job_counts/status", "task_counts/name_status", "task_stats")
UNKNOWN_ID = "0123456789abcdef0123456789abcdef"
COMPAT = ("iceprod_jobs", "iceprod_tasks", "iceprod_future_resources_hours")
#: the server's access log line for every answer: "<LEVEL> root server:NN - <status> <METHOD>"
SERVER_ANSWER = re.compile(r" (INFO|WARNING|ERROR) root server:\d+ - (\d{3}) (GET|POST|PUT|PATCH) ")

Series = dict[str, dict[Labels, float]]


# --------------------------------------------------------------------------- fixtures


class TokenSource:
    """Client-credentials tokens for helper requests, re-fetched shortly before they expire."""

    def __init__(self, issuer: OIDCIssuer, client_id: str) -> None:
        self._url = issuer.url + "/protocol/openid-connect/token"
        self._form = {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": CLIENTS[client_id][0],
        }
        self._token = ""
        self._exp = 0.0

    def __call__(self) -> str:
        if time.time() > self._exp - 1.5:
            r = requests.post(self._url, data=self._form, timeout=10)
            r.raise_for_status()
            self._token = r.json()["access_token"]
            self._exp = jwt.decode(self._token, options={"verify_signature": False})["exp"]
        return self._token


@dataclass
class World:
    """The seeded real server and what the tests need to talk to it."""

    issuer: OIDCIssuer
    api: RealIceProd
    seeded: SeededScenario
    seed_window: tuple[float, float]  # time.time() before and after seeding
    system: TokenSource
    user: TokenSource

    def dataset_ids(self) -> dict[str, str]:
        return {key: d.dataset_id for key, d in self.seeded.datasets.items()}

    def get(self, path: str, token: str | None, **params: str) -> requests.Response:
        headers = {"Authorization": "Bearer " + token} if token else {}
        return requests.get(self.api.url + path, params=params, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("real-iceprod")
    with OIDCIssuer(token_ttl=TOKEN_TTL, audience=AUDIENCE) as issuer:
        for client_id, (secret, claims) in CLIENTS.items():
            issuer.register_client(client_id, secret, claims)
        with RealIceProd(issuer.url, AUDIENCE, log_dir=tmp) as api:
            system = TokenSource(issuer, SYSTEM_CLIENT)
            t0 = time.time()
            seeded = seed_scenario(api.url, system, TokenSource(issuer, "seed-admin"))
            t1 = time.time()
            yield World(issuer, api, seeded, (t0, t1), system, TokenSource(issuer, USER_CLIENT))
        assert api.returncode == 0, api.log_tail()


# --------------------------------------------------------------------------- the exporter CLI


def exporter_env(
    api_url: str,
    issuer: OIDCIssuer,
    client_id: str,
    **settings: str,
) -> dict[str, str]:
    """Environment of an exporter subprocess: IceProd's variable names plus our settings."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "API_URL": api_url,
        "OAUTH_URL": issuer.url,
        "OAUTH_CLIENT_ID": client_id,
        "OAUTH_CLIENT_SECRET": CLIENTS[client_id][0],
        "ICEPROD_EXPORTER_LISTEN_ADDRESS": "127.0.0.1",
        "ICEPROD_EXPORTER_LOG_LEVEL": "debug",  # the most a log could leak
        "ICEPROD_EXPORTER_LOG_FORMAT": "json",
        "ICEPROD_EXPORTER_TIMEOUT": "10",
    }
    env.update({"ICEPROD_EXPORTER_" + k.upper(): v for k, v in settings.items()})
    return env


@dataclass
class Daemon:
    """``iceprod-exporter run`` in a subprocess, scraped over HTTP."""

    process: subprocess.Popen[str]
    url: str
    stdout: Path
    stderr: Path
    scrapes: list[Series] = field(default_factory=list)

    def logs(self) -> str:
        return self.stdout.read_text() + self.stderr.read_text()

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines on stderr."""
        out = []
        for line in self.stderr.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def scrape(self) -> Series:
        status, body = http_get(self.url + "metrics")
        assert status == 200, f"/metrics answered {status}\n{self.stderr.read_text()[-3000:]}"
        series = parse(body.decode())
        self.scrapes.append(series)
        return series


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Daemon]]:
    started: list[Daemon] = []

    def start(env: dict[str, str]) -> Daemon:
        port = free_port()
        env = {**env, "PROMETHEUS_PORT": str(port)}
        out, err = tmp_path / f"run{len(started)}.out", tmp_path / f"run{len(started)}.err"
        url = f"http://127.0.0.1:{port}/"
        d = Daemon(start_exporter(env, url, out, err), url, out, err)
        started.append(d)
        return d

    yield start
    for d in started:
        d.process.terminate()
        try:
            code = d.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            d.process.kill()
            d.process.wait(timeout=15)
            raise AssertionError("the daemon ignored SIGTERM for 15 s") from None
        assert code == 0, f"daemon exited {code}:\n{d.stderr.read_text()[-3000:]}"


# --------------------------------------------------------------------------- comparing series


def parse(text: str) -> Series:
    """Exposition text -> {sample name: {labels: value}}."""
    out: Series = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name][labels(**s.labels)] = s.value
    return dict(out)


def differences(got: Series, want: Series) -> list[str]:
    """Each wanted metric must have exactly the wanted series, values equal (floats: 1e-12)."""
    problems = []
    for name, series in want.items():
        have = got.get(name, {})
        for lbl in sorted(series.keys() - have.keys()):
            problems.append(f"{name}{dict(lbl)}: missing (want {series[lbl]})")
        for lbl in sorted(have.keys() - series.keys()):
            problems.append(f"{name}{dict(lbl)}: unexpected (value {have[lbl]})")
        for lbl in sorted(series.keys() & have.keys()):
            if not math.isclose(have[lbl], series[lbl], rel_tol=1e-12, abs_tol=1e-12):
                problems.append(f"{name}{dict(lbl)}: {have[lbl]} != expected {series[lbl]}")
    return problems


def check_exporter_series(world: World, got: Series, *, as_user: bool = False) -> None:
    """Every expected series and value, plus the server-made timestamps."""
    want = expected.exporter_series(world.dataset_ids(), as_user=as_user)
    problems = differences(got, want)
    # start_date is made by the server: within the seeding window, and each start timestamp
    # equal to the one in the dataset document (GET /datasets/{id}).
    t0, t1 = world.seed_window
    numbers = expected.dataset_numbers()
    watched = {
        str(numbers[ds.key]): ds
        for ds in expected.visible_datasets(as_user=as_user)
        if ds.status != "complete"
    }
    starts = got.get("iceprod_dataset_start_timestamp_seconds", {})
    if set(starts) != {labels(dataset=n) for n in watched}:
        problems.append(f"start timestamps for {sorted(starts)}, want datasets {sorted(watched)}")
    for n, ds in watched.items():
        doc = world.get(
            f"/datasets/{world.seeded.datasets[ds.key].dataset_id}", world.system()
        ).json()
        value = starts.get(labels(dataset=n))
        if value != timestamp(doc["start_date"]) or not t0 <= (value or 0) <= t1:
            problems.append(
                f"dataset {n} start {value} vs document {doc['start_date']} "
                f"and seed window {t0}..{t1}"
            )
    assert not problems, "exporter series differ from the scenario:\n" + "\n".join(problems)
    assert want["iceprod_dataset_tasks"] and want["iceprod_dataset_task_walltime_mean_seconds"]


def exporter_calls() -> set[str]:
    """What one full poll with a system token requests (complete datasets are not watched)."""
    calls = {f"/datasets?keys={DATASET_KEYS}", *ACTIVE_TASKS}
    calls |= {
        f"/datasets/{{{ds.key}}}/{route}"
        for ds in SCENARIO.datasets
        if ds.status != "complete"
        for route in PER_DATASET_ROUTES
    }
    return calls


def templated(world: World, path: str) -> str:
    """A request path with the query unquoted and dataset ids replaced by {scenario key}."""
    path = unquote(path)
    for key, dataset_id in world.dataset_ids().items():
        path = path.replace(dataset_id, "{" + key + "}")
    return path


def assert_loopback_only(pid: int | None, name: str) -> None:
    """Every socket the process listens on is bound to 127.0.0.1."""
    assert pid is not None, f"{name} is not running"
    addresses = listening_addresses(pid)
    assert addresses, f"{name} listens on nothing"
    outside = sorted(a for a in addresses if a[0] != "127.0.0.1")
    assert not outside, f"{name} listens beyond 127.0.0.1: {outside}"


def failures_by_reason(series: Series) -> dict[str, float]:
    """iceprod_exporter_api_request_failures_total summed by reason."""
    out: dict[str, float] = defaultdict(float)
    for lbl, value in series.get("iceprod_exporter_api_request_failures_total", {}).items():
        out[dict(lbl)["reason"]] += value
    return {reason: n for reason, n in out.items() if n}  # every series starts at 0


# --------------------------------------------------------------------------- 1. values


def test_once_reports_every_expected_series(world: World) -> None:
    env = exporter_env(world.api.url, world.issuer, SYSTEM_CLIENT)
    done = run_once(env)
    got = parse(done.stdout)
    assert got["iceprod_up"] == {(): 1.0}
    check_exporter_series(world, got)
    assert failures_by_reason(got) == {}
    assert got["iceprod_exporter_forbidden_datasets"] == {(): 0.0}
    assert not any(got["iceprod_exporter_permission_denied"].values()), "all start at 0"
    assert SYSTEM_SECRET not in done.stdout + done.stderr


# --------------------------------------------------------------------------- 2. token expiries


def test_run_across_token_expiries_through_a_recording_proxy(
    world: World, daemon: Callable[[dict[str, str]], Daemon]
) -> None:
    log_start = len(world.api.log_text())
    with RecordingProxy(world.api.url) as proxy:
        d = daemon(exporter_env(proxy.url, world.issuer, SYSTEM_CLIENT, poll_interval="1"))
        started = time.time()

        def expired_tokens_used() -> int:
            """Tokens the exporter used that have expired since (the daemon still running)."""
            records = proxy.records()
            last = records[-1].at if records else 0.0
            return len({r.token for r in records if r.exp is not None and r.exp <= last})

        def late() -> list[tuple[str, float]]:
            """(path, seconds past exp) of requests whose token had expired."""
            return [(r.path, round(r.at - (r.exp or 0), 3)) for r in proxy.records() if r.expired]

        deadline = time.monotonic() + 8 * TOKEN_TTL + 15
        while expired_tokens_used() < EXPIRIES or time.time() - started < EXPIRIES * TOKEN_TTL:
            assert not late(), f"requests with an expired token (path, seconds past exp): {late()}"
            assert time.monotonic() < deadline, (
                f"only {expired_tokens_used()} token expiries seen by the proxy in "
                f"{time.time() - started:.0f}s\n{d.stderr.read_text()[-3000:]}"
            )
            d.scrape()
            time.sleep(0.25)
        final = d.scrape()
        pages = {p: http_get(d.url + p)[1].decode() for p in ("metrics", "", "healthz", "readyz")}
        # the exporter, the real server and this process (issuer, proxy) listen on loopback only
        for pid, name in (
            (d.process.pid, "the exporter"),
            (world.api.pid, "the real server"),
            (os.getpid(), "the test process"),
        ):
            assert_loopback_only(pid, name)
        records = proxy.records()
        d.process.terminate()  # all logs written; the fixture checks the clean exit
        d.process.wait(timeout=15)

    # iceprod_up was 1 at every scrape
    ups = [s.get("iceprod_up", {}).get(()) for s in d.scrapes]
    assert len(ups) >= 10 and all(u == 1.0 for u in ups), ups
    polls = [e for e in d.events() if e.get("event") == "poll.finished"]
    assert len(polls) > EXPIRIES, f"only {len(polls)} polls"
    assert all(p["up"] for p in polls), [p for p in polls if not p["up"]]
    # the exporter made exactly the calls the simulator comparison (test 3) covers
    assert {templated(world, r.path) for r in records} == exporter_calls(), sorted(
        {templated(world, r.path) for r in records} ^ exporter_calls()
    )
    # the proxy saw only bearer tokens that had not expired yet, and only 200 answers
    assert all(r.token for r in records), [r.path for r in records if not r.token]
    assert not late(), f"requests with an expired token (path, seconds past exp): {late()}"
    tokens = {r.token for r in records}
    assert len(tokens) >= EXPIRIES + 1, f"{len(tokens)} tokens used"
    assert {r.status for r in records} == {200}, sorted({(r.status, r.path) for r in records})
    # the server agrees: every answer in the window logged, none non-2xx (it warns on each)
    wait_for(
        lambda: len(SERVER_ANSWER.findall(world.api.log_text()[log_start:])) >= len(records),
        10,
        f"the server log to show the {len(records)} proxied answers",
    )
    window = world.api.log_text()[log_start:]
    bad = [
        line
        for line in window.splitlines()
        if (m := SERVER_ANSWER.search(line)) and not m.group(2).startswith("2")
    ]
    assert not bad, "the server answered the exporter with errors:\n" + "\n".join(bad[:20])
    assert failures_by_reason(final) == {}, failures_by_reason(final)
    assert not any(final["iceprod_exporter_permission_denied"].values())
    assert final["iceprod_exporter_token_refreshes_total"][()] >= EXPIRIES + 1
    # and the values are right when scraped over HTTP
    check_exporter_series(world, final)
    # the client secret shows up nowhere
    assert "auth mode" in pages[""], "the landing page shows the settings (redacted)"
    assert "poll.finished" in d.logs()
    for where, text in (("logs", d.logs()), *(("/" + p, t) for p, t in pages.items())):
        assert SYSTEM_SECRET not in text, f"client secret leaked in {where}"


# --------------------------------------------------------------------------- 3. simulator


HEX_ID = re.compile(r"\b[0-9a-f]{32}\b")
DATE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}")
# compared as values; Date and Etag (a hash of the body, so of the ids) only as present/absent
HEADERS = (
    "Content-Type",
    "Content-Length",
    "Server",
    "Cache-Control",
    "Pragma",
    "Expires",
    "Content-Security-Policy",
)


def id_names(seeded: SeededScenario) -> dict[str, str]:
    """Generated id -> a name both servers share."""
    names = {}
    for key, d in seeded.datasets.items():
        names[d.dataset_id] = f"<dataset {key}>"
        for j, job_id in enumerate(d.job_ids):
            names[job_id] = f"<job {key}/{j}>"
        for j, task_ids in enumerate(d.task_ids):
            names.update({t: f"<task {key}/{j}/{i}>" for i, t in enumerate(task_ids)})
    names.update({gid: f"<grid {host}>" for host, gid in seeded.grids.items()})
    return names


def answer(r: requests.Response, names: Mapping[str, str]) -> dict[str, Any]:
    """A response with ids and dates replaced, so two servers' answers compare as text."""
    body = HEX_ID.sub(lambda m: names.get(m.group(), "<id>"), r.text)
    return {
        "status": f"{r.status_code} {r.reason}",
        "headers": {h: r.headers.get(h) for h in HEADERS},
        "has": sorted(h for h in ("Date", "Etag") if h in r.headers),
        "body": DATE.sub("<date>", body),
    }


def test_simulator_answers_like_the_real_server(world: World) -> None:
    assert "|".join(parse_module.DATASET_KEYS) == DATASET_KEYS, "the exporter's query changed"
    loaded = load_store(SCENARIO)
    real_names, sim_names = id_names(world.seeded), id_names(loaded.seeded)
    assert len(real_names) == len(sim_names)
    # (who, path with {key} for a scenario dataset, query)
    calls: list[tuple[str, str, dict[str, str]]] = [
        ("system", "/datasets", {"keys": DATASET_KEYS}),
        ("system", "/grids", {}),
        *(("system", path, {}) for path in ACTIVE_TASKS),
        ("system", "/datasets", {"status": "bogus"}),
        ("system", "/datasets", {"status": "bogus", "keys": DATASET_KEYS}),
        ("system", f"/datasets/{UNKNOWN_ID}", {}),
        ("user", "/datasets", {"keys": DATASET_KEYS}),
        ("user", "/grids", {}),
        *(("user", path, {}) for path in ACTIVE_TASKS),
        ("user", "/datasets", {"status": "bogus"}),
        ("user", f"/datasets/{UNKNOWN_ID}", {}),
        ("nobody", "/datasets", {"keys": DATASET_KEYS}),
    ]
    for who in ("system", "user"):
        calls += [(who, f"/datasets/{UNKNOWN_ID}/{route}", {}) for route in PER_DATASET_ROUTES]
        calls += [
            (who, f"/datasets/{{{ds.key}}}/{route}", {})
            for ds in SCENARIO.datasets
            for route in PER_DATASET_ROUTES
        ]
    # the submitter of the restricted dataset reads it through read_users; a numeric username
    # counts as one, an empty one does not; a token without an IceCube group has no role
    restricted = next(ds.key for ds in SCENARIO.datasets if not ds.readable_by_users)
    for who in ("submitter", "numbered", "nameless", "outsider"):
        calls += [(who, "/datasets", {"keys": DATASET_KEYS}), (who, "/grids", {})]
        calls += [(who, f"/datasets/{{{restricted}}}/{route}", {}) for route in PER_DATASET_ROUTES]
    tokens: dict[str, Callable[[], str]] = {
        "system": world.system,
        "user": world.user,
        "nobody": lambda: "",
    }
    tokens.update(
        {
            who: TokenSource(world.issuer, who)
            for who in ("submitter", "numbered", "nameless", "outsider")
        }
    )
    compared = defaultdict(set)
    problems: list[str] = []
    with SimulatedIceProd(loaded.store, world.issuer, audience=AUDIENCE) as sim:
        for who, template, query in calls:
            real_path = template.format(**world.dataset_ids())
            sim_path = template.format(
                **{k: d.dataset_id for k, d in loaded.seeded.datasets.items()}
            )
            token = tokens[who]()
            headers = {"Authorization": "Bearer " + token} if token else {}
            got = [
                answer(requests.get(base + path, params=query, headers=headers, timeout=30), names)
                for base, path, names in (
                    (world.api.url, real_path, real_names),
                    (sim.url, sim_path, sim_names),
                )
            ]
            compared[who].add(got[0]["status"])
            if got[0] != got[1]:
                diff = {k: (got[0][k], got[1][k]) for k in got[0] if got[0][k] != got[1][k]}
                problems.append(f"{who} GET {template} {query}: (real, simulator) {diff}")
    assert not problems, f"{len(problems)} differences:\n" + "\n".join(problems)
    # facts of the real server the comparison relies on (iceprod-api.md does not say them)
    ok = world.get(f"/datasets/{UNKNOWN_ID}/job_counts/status", world.system())
    assert (ok.status_code, ok.json()) == (200, {}), "system token: unknown id = no counts"
    assert ok.headers["Server"] == "" and ok.headers["Cache-Control"].startswith("no-store")
    denied = world.get(f"/datasets/{UNKNOWN_ID}/job_counts/status", world.user())
    assert (denied.status_code, denied.reason) == (403, "attr not found")
    assert denied.headers["Server"] == "IceProd/3.2.43" and "Cache-Control" not in denied.headers
    # the comparison covered successes and every error the brief names
    assert compared["system"] >= {"200 OK", "400 unknown status", "404 Dataset not found"}
    assert compared["user"] >= {
        "200 OK",
        "403 authorization failed",
        "403 attr not found",
        "400 unknown status",
    }
    assert compared["nobody"] == compared["nameless"] == {"403 authentication failed"}
    assert compared["submitter"] == {"200 OK", "403 authorization failed"}
    assert compared["numbered"] == {"200 OK", "403 authorization failed"}
    assert compared["outsider"] == {"403 authorization failed"}


# --------------------------------------------------------------------------- 4. compatibility


def test_compat_mode_matches_dataset_monitor(world: World) -> None:
    monitor = parse(world.api.run_dataset_monitor(SYSTEM_CLIENT, SYSTEM_SECRET))
    env = exporter_env(world.api.url, world.issuer, SYSTEM_CLIENT, compat_dataset_monitor="true")
    ours = parse(run_once(env).stdout)
    for name in COMPAT:
        assert monitor.get(name), f"dataset_monitor exported no {name}"
        mismatch = differences(ours, {name: monitor[name]})
        assert not mismatch, f"{name}: exporter vs dataset_monitor:\n" + "\n".join(mismatch)
    # and both agree with the scenario
    names = {
        "iceprod_jobs": ("dataset", "status"),
        "iceprod_tasks": ("dataset", "taskname", "status"),
        "iceprod_future_resources_hours": ("resource",),
    }
    for name, series in expected.dataset_monitor().items():
        want = {labels(**dict(zip(names[name], key, strict=True))): v for key, v in series.items()}
        mismatch = differences(ours, {name: want})
        assert not mismatch, f"{name}: exporter vs scenario:\n" + "\n".join(mismatch)


# --------------------------------------------------------------------------- 5. access rules


def test_plain_user_token_reads_what_it_may(
    world: World, daemon: Callable[[dict[str, str]], Daemon]
) -> None:
    restricted = [ds for ds in SCENARIO.datasets if not ds.readable_by_users]
    assert restricted, "the scenario needs a dataset users may not read"
    # what the real server does with it: left out of the user's dataset list, not refused
    listed = world.get("/datasets", world.user(), keys=DATASET_KEYS)
    assert listed.status_code == 200
    hidden = {world.seeded.datasets[ds.key].dataset_id for ds in restricted}
    assert not hidden & set(listed.json())
    assert len(listed.json()) == len(expected.visible_datasets(as_user=True))

    d = daemon(exporter_env(world.api.url, world.issuer, USER_CLIENT, poll_interval="1"))

    def four_polls() -> bool:
        d.scrape()
        return sum(1 for e in d.events() if e.get("event") == "poll.finished") >= 4

    wait_for(
        four_polls,
        30,
        "four polls with the user token",
        diagnose=lambda: d.stderr.read_text()[-3000:],
    )
    final = d.scrape()
    ups = [s.get("iceprod_up", {}).get(()) for s in d.scrapes]
    assert all(u == 1.0 for u in ups), f"iceprod_up per scrape: {ups}"
    check_exporter_series(world, final, as_user=True)
    numbers = expected.dataset_numbers()
    exposed = {dict(lbl)["dataset"] for lbl in final["iceprod_dataset_info"]}
    assert not exposed & {str(numbers[ds.key]) for ds in restricted}
    assert "iceprod_active_tasks" not in final
    # the IceProd-wide route is a permission problem: the gauge, and one log line over all polls
    denied = final["iceprod_exporter_permission_denied"]
    global_route = "/task_counts/status"
    assert {lbl: n for lbl, n in denied.items() if n} == {labels(endpoint=global_route): 1.0}
    assert len(denied) == 5, "every endpoint template starts at 0"
    assert final["iceprod_exporter_forbidden_datasets"] == {(): 0.0}
    failed = {
        dict(lbl)["endpoint"]: dict(lbl)["reason"]
        for lbl, n in final["iceprod_exporter_api_request_failures_total"].items()
        if n
    }
    assert failed == {global_route: "forbidden"}, failed
    events = d.events()
    denials = [e for e in events if e.get("event") == "permission.denied"]
    polls = [e for e in events if e.get("event") == "poll.finished"]
    assert len(polls) >= 4 and all(p["up"] for p in polls)
    assert [e["endpoint"] for e in denials] == [global_route], denials
    assert USER_SECRET not in d.logs()
