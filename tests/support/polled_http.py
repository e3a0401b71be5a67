"""An exporter polled once against the simulator and served in-process over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from iceprod_exporter import config
from iceprod_exporter.daemon.exporter import Exporter
from iceprod_exporter.http.server import HttpServer
from iceprod_exporter.http.web_config import LiveWebConfig
from iceprod_simulator import SimulatedIceProd, build_store

DATASETS = 6


PASSWORD = "scrape-pass-0xBEEF"


@pytest.fixture(scope="module")
def polled() -> Iterator[Exporter]:
    """An exporter that has polled a simulated IceProd once (no HTTP server of its own)."""
    with SimulatedIceProd(build_store(datasets=DATASETS, seed=3)) as simulator:
        values = {"api_url": simulator.url, "token": "t", "retries": "0", "timeout": "5"}
        exporter = Exporter(config.validate(values))
        assert asyncio.run(exporter.once()).up
        yield exporter


def serve(e: Exporter, address: str = "127.0.0.1", **kwargs: object) -> HttpServer:
    server = HttpServer(e.metrics, e.status, address, 0, **kwargs)  # type: ignore[arg-type]
    server.start()
    return server


def web_config(tmp: Path, text: str) -> LiveWebConfig:
    path = tmp / "web.yml"
    path.write_text(text)
    return LiveWebConfig.from_file(path)


def b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()
