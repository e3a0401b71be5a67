"""The exporter's own instruments, built from the metric table."""

from __future__ import annotations

import math
import platform
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from iceprod_exporter import __version__
from iceprod_exporter.exposition.metrics import Kind, spec
from iceprod_exporter.memory import resident_bytes
from iceprod_exporter.source.labels import API_REASONS, TOKEN_REASONS, Endpoint, ValueField

# Polls fan out over many datasets, so they run far longer than single requests.
POLL_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def _counter(name: str, registry: CollectorRegistry) -> Counter:
    s = spec(name)
    assert s.kind is Kind.COUNTER
    return Counter(s.name, s.help, s.labels, registry=registry)


def _gauge(name: str, registry: CollectorRegistry) -> Gauge:
    s = spec(name)
    assert s.kind is Kind.GAUGE
    return Gauge(s.name, s.help, s.labels, registry=registry)


class HttpTelemetry:
    """The HTTP server's own counters, kept where requests are served (the serving process)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = _counter("iceprod_exporter_http_requests_total", registry)
        self.auth_failures = _counter("iceprod_exporter_http_auth_failures_total", registry)
        # the serving process holds the encoded exposition, a large share of the exporter's memory;
        # like process_resident_memory_bytes, absent where /proc cannot tell
        if not math.isnan(resident_bytes()):
            resident = _gauge("iceprod_exporter_serving_resident_memory_bytes", registry)
            resident.set_function(resident_bytes)


class Telemetry:
    """Counters, gauges and histograms about polling and tokens, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str) -> Counter:
            return _counter(name, registry)

        def gauge(name: str) -> Gauge:
            return _gauge(name, registry)

        def histogram(name: str, buckets: tuple[float, ...]) -> Histogram:
            s = spec(name)
            assert s.kind is Kind.HISTOGRAM
            return Histogram(s.name, s.help, s.labels, buckets=buckets, registry=registry)

        self.build_info = gauge("iceprod_exporter_build_info")
        self.build_info.labels(
            __version__, platform.python_version(), _package_version("wipac-rest-tools")
        ).set(1)
        self.datasets_watched = gauge("iceprod_exporter_datasets_watched")
        self.oldest_count = gauge("iceprod_exporter_oldest_count_timestamp_seconds")
        self.forbidden_datasets = gauge("iceprod_exporter_forbidden_datasets")
        self.permission_denied = gauge("iceprod_exporter_permission_denied")
        self.poll_duration = histogram("iceprod_exporter_poll_duration_seconds", POLL_BUCKETS)
        self.poll_failures = counter("iceprod_exporter_poll_failures_total")
        self.poll_crashes = counter("iceprod_exporter_poll_crashes_total")
        self.bad_values = counter("iceprod_exporter_bad_values_total")
        self.requests = counter("iceprod_exporter_api_requests_total")
        self.request_failures = counter("iceprod_exporter_api_request_failures_total")
        self.request_duration = histogram(
            "iceprod_exporter_api_request_duration_seconds", REQUEST_BUCKETS
        )
        self.in_flight = gauge("iceprod_exporter_api_requests_in_flight")
        self.token_refreshes = counter("iceprod_exporter_token_refreshes_total")
        self.token_failures = counter("iceprod_exporter_token_refresh_failures_total")
        self.token_expiry = gauge("iceprod_exporter_token_expiry_timestamp_seconds")
        # every bounded label combination starts at 0, so the first failure is an increase
        for endpoint in Endpoint:
            self.requests.labels(endpoint)
            self.request_duration.labels(endpoint)
            self.permission_denied.labels(endpoint)
            for reason in API_REASONS:
                self.request_failures.labels(endpoint, reason)
        for reason in TOKEN_REASONS:
            self.token_failures.labels(reason)
        for field in ValueField:
            self.bad_values.labels(field)
