"""The one place to change the monitoring: selectors, labels, thresholds, windows, durations.

Every rule, alert and dashboard is a function of a :class:`Config`; the shipped artefacts are
rendered from :data:`DEFAULT`. A deployment with other needs changes a value here (or renders
with ``dataclasses.replace(DEFAULT, ...)``) and runs ``make generate``; the thresholds the
dashboards colour by and the alerts fire at can then not drift apart.

The defaults assume the exporter's own defaults (poll every 60 s, last good values served for
``max_staleness`` = 600 s) and a 30 s scrape.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Config:
    """Selectors, labels, thresholds, windows and ``for:`` durations of the mixin."""

    # --- selectors and labels
    #: the scrape job of the exporter (``up{job=...}``, the exporter dashboard's instances)
    job: str = "iceprod-exporter"
    #: target labels that tell the copies of one series from HA replicas (and shards) apart:
    #: ``instance``, and ``pod`` under Kubernetes service discovery. Add any label your
    #: relabelling puts on the copies. Empty: no deduplication (rules for one exporter only).
    replica_labels: tuple[str, ...] = ("instance", "pod")
    #: labels of ``iceprod_dataset_info`` that every alert about a dataset carries, for routing
    #: to the IceProd group and the user who own it
    owner_labels: tuple[str, ...] = ("group", "username")
    #: IceProd groups the example Alertmanager configuration has a receiver for
    iceprod_groups: tuple[str, ...] = ("simprod", "filtering", "users")

    # --- links
    #: base URL of Grafana in the alerts' dashboard_url (a placeholder: set yours)
    grafana_url: str = "https://grafana.example.org"
    overview_uid: str = "iceprod-overview"
    dataset_uid: str = "iceprod-dataset"
    exporter_uid: str = "iceprod-exporter"

    # --- exporter and IceProd API
    exporter_down_for: str = "5m"
    #: five failed polls at the default interval ride out a restart of the API
    api_down_for: str = "5m"
    #: window of the failed requests named in IceProdAPIDown and counted by ...TokenRejected
    api_failure_window: str = "5m"
    token_rejected_for: str = "5m"
    #: seconds since the last successful poll: the exporter's default max_staleness
    stale_seconds: int = 600
    stale_for: str = "5m"
    #: seconds since a watched dataset was last counted: three times the exporter's default
    #: quiet_poll_interval, the longest its cadence leaves a dataset unread
    counts_behind_seconds: int = 900
    counts_behind_for: str = "10m"
    #: the data-age panels turn orange here (three missed polls), red at stale_seconds
    data_age_warning_seconds: int = 180
    token_failure_window: str = "15m"
    token_refresh_failing_for: str = "10m"
    token_expired_for: str = "5m"
    #: the 403 gauge counts the last poll only, and suspended/errors datasets are read every
    #: slow_poll_factor polls (5 min by default): the highest count in this window counts
    permission_denied_window: str = "10m"
    permission_denied_for: str = "30m"

    # --- datasets
    #: filters out a status flipped by hand and back
    dataset_errors_for: str = "1m"
    #: no task completed in this window: a few times the longest task walltime you expect
    stall_window: str = "2h"
    dataset_stalled_for: str = "15m"
    #: share (0-1) of a dataset's finished tasks that are failed
    failure_ratio: float = 0.1
    #: ... with at least this many failed tasks (1 failure out of 3 tasks stays quiet)
    failure_min_tasks: int = 10
    failure_ratio_for: str = "30m"
    queue_starved_for: str = "30m"

    #: a processing dataset with waiting tasks but none queued or processing for this long:
    #: IceProdDatasetStarved (a low-priority dataset may wait behind others for a while)
    dataset_starved_for: str = "3h"

    # --- IceProd-wide backlog by resource kind (iceprod_active_tasks, shard 0)
    #: waiting tasks of one kind (cpu, gpu), none queued or processing: IceProdResourceStarved
    resource_starved_for: str = "2h"

    # --- IceProd's housekeeping crons (scheduled_tasks/), watched through their symptoms
    #: a dataset or job left in a state its cron would have changed: a few cron periods
    housekeeping_for: str = "1h"
    #: idle tasks of one kind, nothing waiting, queued or processing: queue_tasks is not running
    queue_tasks_for: str = "1h"
    #: the materialized job count stays flat this long while jobs remain to materialize (the
    #: window of the comparison; the alert's ``for:`` is as long, so it fires after twice this)
    materialization_window: str = "1h"

    # --- grids: the grid daemons' own metrics (iceprod.server, ``PROMETHEUS`` enabled)
    #: the scrape job of IceProd's grid daemons (``up{job=...}``, their ``iceprod_grid_*``)
    grid_job: str = "iceprod-grid"
    #: a grid daemon that cannot be scraped for this long: IceProdGridDown
    grid_down_for: str = "10m"
    #: the scrape job of WIPACrepo/monitoring-scripts' condor_history_to_prometheus.py
    condor_history_job: str = "condor-history"


#: what the shipped artefacts are rendered from
DEFAULT = Config()

_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day"}
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(duration: str) -> int:
    """Seconds of a one-unit Prometheus duration (``"90s"``, ``"5m"``, ``"2h"``)."""
    return int(duration[:-1]) * _SECONDS[duration[-1]]


def spoken(duration: str | int) -> str:
    """A duration for people: ``"5m"`` -> ``"5 minutes"``, ``3600`` -> ``"1 hour"``."""
    if isinstance(duration, int):
        unit = next(u for u in ("d", "h", "m", "s") if duration % _SECONDS[u] == 0)
        duration = f"{duration // _SECONDS[unit]}{unit}"
    count = int(duration[:-1])
    name = _UNITS[duration[-1]]
    return f"{count} {name}" if count == 1 else f"{count} {name}s"


def percent(ratio: float) -> str:
    """A ratio for people: ``0.1`` -> ``"10%"``."""
    return f"{ratio * 100:g}%"
