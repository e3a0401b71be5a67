"""The exporter's health: scrapes, polls, API requests, token.

Per instance throughout (legend ``{{instance}}``): a slow or failing replica or shard must stand
out, not be averaged away.
"""

from __future__ import annotations

from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as models

from ..config import Config, spoken
from ..panels import (
    dashboard_model,
    organize,
    query,
    query_variable,
    right_axis,
    stat_panel,
    table_panel,
    table_query,
    thresholds,
    timeseries_panel,
    up_mapping,
)

I_ = 'instance=~"$instance"'
RATE = "[$__rate_interval]"


def _rate(metric: str, by: str) -> str:
    return f"sum by ({by}) (rate({metric}{{{I_}}}{RATE}))"


def _increase(metric: str, by: str | None) -> str:
    aggregation = f"sum by ({by}) " if by else "sum"
    return f"{aggregation}(increase({metric}{{{I_}}}{RATE}))"


def _quantile(q: float, metric: str, by: str) -> str:
    return f"histogram_quantile({q:g}, sum by ({by}, le) (rate({metric}_bucket{{{I_}}}{RATE})))"


def _mean(metric: str, by: str) -> str:
    return f"{_rate(metric + '_sum', by)}\n/ {_rate(metric + '_count', by)}"


def build(cfg: Config) -> models.Dashboard:
    """The exporter dashboard."""
    job = f'job="{cfg.job}", {I_}'
    age = f"time() - iceprod_exporter_last_successful_poll_timestamp_seconds{{{I_}}}"
    expires = f"(iceprod_exporter_token_expiry_timestamp_seconds{{{I_}}} > 0) - time()"
    poll = "iceprod_exporter_poll_duration_seconds"
    latency = "iceprod_exporter_api_request_duration_seconds"
    health = [
        stat_panel(
            "Exporter scraped",
            f'Prometheus can scrape the exporter (up{{job="{cfg.job}"}}).',
            query(f"up{{{job}}}", "{{instance}}"),
        ).mappings(up_mapping()),
        stat_panel(
            "IceProd API",
            "The last poll could read IceProd's dataset list (iceprod_up).",
            query(f"iceprod_up{{{I_}}}", "{{instance}}"),
        ).mappings(up_mapping("unreachable", "reachable")),
        stat_panel(
            "Data age",
            "Seconds since the last successful poll "
            "(time() - iceprod_exporter_last_successful_poll_timestamp_seconds).",
            query(age, "{{instance}}"),
            unit="s",
        ).thresholds(
            thresholds(
                (None, "green"),
                (cfg.data_age_warning_seconds, "orange"),
                (cfg.stale_seconds, "red"),
            )
        ),
        stat_panel(
            "Datasets watched",
            "Per exporter instance: datasets whose counts it polls, and datasets whose routes "
            "answer 403 to its token. Shards split the datasets between them; HA replicas each "
            "watch the same ones.",
            query(
                f"sum by (instance) (iceprod_exporter_datasets_watched{{{I_}}})",
                "watched {{instance}}",
            ),
            query(
                f"sum by (instance) (iceprod_exporter_forbidden_datasets{{{I_}}})",
                "forbidden {{instance}}",
            ),
            width=6,
        )
        .text_mode(common_models.BigValueTextMode.VALUE_AND_NAME)
        .color_mode(common_models.BigValueColorMode.NONE),
        stat_panel(
            "Token expires in",
            "Time until the access token expires (empty for a static token without expiry).",
            query(expires, "{{instance}}"),
            unit="s",
            width=6,
        )
        .no_value("unknown")
        .thresholds(thresholds((None, "red"), (0, "orange"), (60, "green"))),
        timeseries_panel(
            "Staleness",
            "Seconds since the last successful poll; the exporter drops dataset values once "
            "this passes max_staleness, and IceProdExporterMetricsStale fires above "
            f"{spoken(cfg.stale_seconds)}. Oldest count: seconds since the watched dataset "
            "counted longest ago was counted; quiet and slow datasets are counted every "
            "quiet_poll_interval, and IceProdExporterFallingBehind fires above "
            f"{spoken(cfg.counts_behind_seconds)}.",
            query(age, "last poll {{instance}}"),
            query(
                f"time() - iceprod_exporter_oldest_count_timestamp_seconds{{{I_}}}",
                "oldest count {{instance}}",
            ),
            unit="s",
        ),
        timeseries_panel(
            "Poll duration",
            "Per exporter instance (a slow shard or replica stands out): duration of poll "
            "cycles (quantiles from iceprod_exporter_poll_duration_seconds) and failed polls "
            "per minute.",
            query(_quantile(0.5, poll, "instance"), "p50 {{instance}}"),
            query(_quantile(0.95, poll, "instance"), "p95 {{instance}}"),
            query(_mean(poll, "instance"), "mean {{instance}}"),
            query(
                f"{_rate('iceprod_exporter_poll_failures_total', 'instance')} * 60",
                "failed polls / min {{instance}}",
            ),
            unit="s",
        ).override_by_regexp("^failed polls / min", right_axis("short")),
    ]
    requests = "iceprod_exporter_api_requests_total"
    failures = "iceprod_exporter_api_request_failures_total"
    api = [
        timeseries_panel(
            "Requests by endpoint",
            "IceProd API requests per second by endpoint template (retries included).",
            query(_rate(requests, "endpoint"), "{{endpoint}}"),
            unit="reqps",
            width=8,
        ),
        timeseries_panel(
            "Errors by endpoint and reason",
            "Failed requests per second. Reasons: timeout, connection, unauthorized (401), "
            "forbidden (403), not_found, overloaded (503/429), server_error (other 5xx), "
            "client_error (other 4xx), bad_response (not the JSON expected), token (no token).",
            query(_rate(failures, "endpoint, reason"), "{{endpoint}} {{reason}}"),
            unit="reqps",
            width=8,
        ),
        timeseries_panel(
            "Error ratio by endpoint",
            "Failed over all requests, per endpoint template.",
            query(
                f"{_rate(failures, 'endpoint')}\n/ {_rate(requests, 'endpoint')}", "{{endpoint}}"
            ),
            unit="percentunit",
            width=8,
        ).min(0),
        timeseries_panel(
            "Latency by endpoint (p95)",
            "95th percentile of request latency per endpoint template.",
            query(_quantile(0.95, latency, "endpoint"), "{{endpoint}}"),
            unit="s",
            width=8,
        ),
        timeseries_panel(
            "Latency by endpoint (mean)",
            "Mean request latency per endpoint template.",
            query(_mean(latency, "endpoint"), "{{endpoint}}"),
            unit="s",
            width=8,
        ),
        timeseries_panel(
            "Requests in flight",
            "Requests in flight or waiting for the rate limiter.",
            query(
                f"sum by (instance) (iceprod_exporter_api_requests_in_flight{{{I_}}})",
                "{{instance}}",
            ),
            width=8,
        ),
        timeseries_panel(
            "Permission denied by endpoint",
            "403 answers in the last poll, by endpoint template and exporter instance: routes "
            "the token may not read. A permission problem, not an outage: /task_counts/status "
            "(the IceProd-wide backlog by resource kind) needs the iceprod-system role (or "
            "admin group), per-dataset routes need read access to the dataset. "
            "IceProdExporterPermissionDenied fires when a route keeps answering 403 "
            f"for {spoken(cfg.permission_denied_for)}.",
            query(
                f"max by (instance, endpoint) (iceprod_exporter_permission_denied{{{I_}}})",
                "{{endpoint}} {{instance}}",
            ),
            width=24,
        )
        .min(0)
        .decimals(0),
        timeseries_panel(
            "Dropped values and crashed polls",
            "Values in IceProd's answers the exposition cannot carry (out of range, not finite, "
            "not UTF-8, duplicate dataset numbers), dropped by field: the rest of the dataset is "
            "still exported. Crashed polls are exporter bugs (log event poll.crashed); each is "
            "also a failed poll.",
            query(_increase("iceprod_exporter_bad_values_total", "field"), "dropped: {{field}}"),
            query(
                _increase("iceprod_exporter_poll_crashes_total", "instance"),
                "crashed polls {{instance}}",
            ),
        ).min(0),
        timeseries_panel(
            "HTTP requests and refused logins",
            "Requests the exporter's HTTP server answered, by handler and status code, and "
            "requests refused for missing or wrong basic-auth credentials (401). A steady "
            "stream of 401s is a scraper with a stale password.",
            query(
                _rate("iceprod_exporter_http_requests_total", "handler, code"),
                "{{handler}} {{code}}",
            ),
            query(
                _rate("iceprod_exporter_http_auth_failures_total", "instance"),
                "refused logins {{instance}}",
            ),
            unit="reqps",
        ).min(0),
        timeseries_panel(
            "Resident memory",
            "Resident memory of the main process (poller and encoder; needs process_metrics, on "
            "by default) and of the serving process, which keeps the encoded exposition ready in "
            "every variant and holds two copies for a moment at each swap. Their sum overstates "
            "the total a little (both map the same libraries); size the memory limit above it.",
            query(
                f"max by (instance) (process_resident_memory_bytes{{{I_}}})",
                "main {{instance}}",
            ),
            query(
                f"max by (instance) (iceprod_exporter_serving_resident_memory_bytes{{{I_}}})",
                "serving {{instance}}",
            ),
            unit="bytes",
        ).min(0),
    ]
    token = [
        timeseries_panel(
            "Token refreshes and failures",
            "Token acquisitions and failed attempts by reason (timeout, connection, rejected, "
            "bad_response, config), per interval.",
            query(_increase("iceprod_exporter_token_refreshes_total", None), "refreshed"),
            query(
                _increase("iceprod_exporter_token_refresh_failures_total", "reason"),
                "failed: {{reason}}",
            ),
        ).min(0),
        timeseries_panel(
            "Token lifetime left",
            "Seconds until the current access token expires; it should be renewed well before 0.",
            query(expires, "{{instance}}"),
            unit="s",
        ),
    ]
    build_info = [
        table_panel(
            "Exporter build",
            "Version of every exporter instance.",
            table_query(f"iceprod_exporter_build_info{{{I_}}}"),
            height=5,
        ).with_transformation(organize(exclude=("Time", "Value", "__name__"))),
    ]
    return dashboard_model(
        cfg.exporter_uid,
        "IceProd exporter",
        "Health of iceprod-exporter: scrapes, polls, staleness, IceProd API requests, errors "
        "and latency by endpoint, token expiry and refresh failures.",
        [
            query_variable(
                "instance", "Exporter", f'label_values(up{{job="{cfg.job}"}}, instance)', multi=True
            )
        ],
        [
            ("Health", health),
            ("IceProd API requests", api),
            ("Token", token),
            ("Build", build_info),
        ],
    )
