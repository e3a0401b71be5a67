"""The simulated IceProd API and the local OIDC issuer, over real HTTP on 127.0.0.1."""

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
from tests.support.simulator import client_token, get


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
