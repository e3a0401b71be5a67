"""The simulated IceProd API and the local OIDC issuer, over real HTTP on 127.0.0.1."""

import signal
import subprocess
import sys
import time

import pytest
import requests
from rest_tools.client import RestClient

from iceprod_simulator import (
    OIDCIssuer,
    SimulatedIceProd,
    Simulation,
    build_store,
)
from tests.support.simulator import (
    client_token,
    get,
)


def test_fail_status_with_retry_after(
    issuer: OIDCIssuer, world: tuple[SimulatedIceProd, dict[str, str]]
) -> None:
    """fail_status answers every request; retry_after adds the header rest_tools honours."""
    api, _ = world
    token = client_token(issuer, "exporter")
    api.faults.fail_status = 503
    api.faults.fail_reason = "server overloaded"
    api.faults.retry_after = 1
    resp = get(api, "/grids", token)
    assert (resp.status_code, resp.text) == (503, '{"code": 503, "error": "server overloaded"}')
    assert resp.headers["Retry-After"] == "1"
    before = api.records.request_counts()["/grids"]
    rc = RestClient(api.url, token=token, retries=1)
    start = time.monotonic()
    with pytest.raises(requests.exceptions.RetryError):
        rc.request_seq("GET", "/grids")
    assert time.monotonic() - start >= 1.0
    assert api.records.request_counts()["/grids"] == before + 2
    api.faults.fail_status = None
    assert get(api, "/grids", token).status_code == 200


def test_step_on_a_thousand_datasets_is_cheap() -> None:
    """One step over 1,000 datasets takes well under a second."""
    store = build_store(1000, seed=2)
    simulation = Simulation(store, seed=2)
    start = time.monotonic()
    simulation.step()
    assert time.monotonic() - start < 0.5


def test_quiet_datasets_keep_their_counts_while_busy_ones_move() -> None:
    """With busy_share below 1 most processing datasets sit still; the share holds on average."""

    def moved(busy_share: float) -> tuple[float, Simulation]:
        store = build_store(200, seed=7)
        simulation = Simulation(store, seed=7, busy_share=busy_share)
        processing = [d for d, doc in store.datasets.items() if doc["status"] == "processing"]

        def tasks() -> dict[str, list[str]]:
            return {d: [t["status"] for t in store.tasks_of(d)] for d in processing}

        before = tasks()
        for _ in range(10):
            simulation.step()
        after = tasks()
        return sum(before[d] != after[d] for d in processing) / len(processing), simulation

    assert moved(1.0)[0] >= 0.8, "everything moves by default"
    share, simulation = moved(0.2)
    assert share <= 0.4, f"{share:.0%} moved: quiet datasets must keep their counts"
    shares = []
    for _ in range(300):
        simulation.step()
        processing = sum(d["status"] == "processing" for d in simulation.store.datasets.values())
        shares.append(simulation.busy() / max(1, processing))
    assert 0.1 <= sum(shares) / len(shares) <= 0.35, "a fifth busy on average"
    with pytest.raises(ValueError, match="busy_share"):
        Simulation(simulation.store, busy_share=0.0)


def test_cli_serves_until_sigterm() -> None:
    """The CLI prints both URLs, serves with auth, and exits cleanly on SIGTERM."""
    cmd = [sys.executable, "-m", "iceprod_simulator", "--datasets", "5", "--tick", "0.1"]
    cmd += ["--client-id", "bench", "--client-secret", "pw", "--token-ttl", "60"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            issuer_url = proc.stdout.readline().split()[-1]
            api_url = proc.stdout.readline().split()[-1]
            config = requests.get(f"{issuer_url}/.well-known/openid-configuration").json()
            form = {"grant_type": "client_credentials"}
            token = requests.post(config["token_endpoint"], data=form, auth=("bench", "pw")).json()[
                "access_token"
            ]
            resp = requests.get(
                f"{api_url}/task_counts/status", headers={"Authorization": f"Bearer {token}"}
            )
            assert resp.status_code == 200
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            proc.kill()


def test_new_submissions_keep_a_long_run_moving() -> None:
    store = build_store(datasets=12, seed=5)
    simulation = Simulation(store, seed=5)

    def processing() -> int:
        return sum(d["status"] == "processing" for d in store.datasets.values())

    start, datasets = processing(), len(store.datasets)
    completed = 0
    for _ in range(400):
        simulation.step()
        completed = sum(d["status"] == "complete" for d in store.datasets.values())
    assert completed > 0, "datasets finish"
    assert len(store.datasets) > datasets, "new datasets are submitted"
    assert 0 < processing() <= start, "about as many processing as at the start, never more"
