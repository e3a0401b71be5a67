"""The one table of every metric the exporter exposes.

The collector, the exporter's own instruments, the generated reference (docs/metrics.md) and the
tests all read this table; a metric exists here or nowhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum

from iceprod_exporter.model.snapshot import (
    ACTIVE_TASK_STATUSES,
    DATASET_STATUSES,
    JOB_STATUSES,
    RESOURCES,
    TASK_STATUSES,
    Dataset,
    Snapshot,
    dense,
)
from iceprod_exporter.source.labels import Endpoint

HOUR = 3600.0
CACHED = " Cached: refreshed by the background poll, not at scrape time."

Sample = tuple[tuple[str, ...], float]
Sampler = Callable[[Snapshot], Iterable[Sample]]


class Kind(StrEnum):
    """Prometheus metric type."""

    GAUGE = "gauge"
    COUNTER = "counter"
    HISTOGRAM = "histogram"


class Stability(StrEnum):
    """Stability level (kube-state-metrics policy: deprecations last two minor releases)."""

    STABLE = "stable"
    DEPRECATED = "deprecated"


class Group(StrEnum):
    """Where a metric's values come from."""

    ICEPROD = "iceprod"  # IceProd state, from the snapshot
    COMPAT = "compat"  # IceProd dataset_monitor names, only with compat_dataset_monitor
    EXPORTER = "exporter"  # the exporter's own instruments


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its contract (name, type, help, labels) and how to compute it."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    group: Group = Group.ICEPROD
    stability: Stability = Stability.STABLE
    sampler: Sampler | None = None


def _datasets(snapshot: Snapshot) -> Iterator[Dataset]:
    return iter(snapshot.ordered())


def _per_dataset(value: Callable[[Dataset], float | None]) -> Sampler:
    def sample(snapshot: Snapshot) -> Iterator[Sample]:
        for d in _datasets(snapshot):
            v = value(d)
            if v is not None:
                yield (d.label,), v

    return sample


def _up(snapshot: Snapshot) -> Iterator[Sample]:
    yield (), 1.0 if snapshot.up else 0.0


def _last_success(snapshot: Snapshot) -> Iterator[Sample]:
    if snapshot.last_success is not None:
        yield (), snapshot.last_success


def _dataset_counts(snapshot: Snapshot) -> Iterator[Sample]:
    if snapshot.dataset_counts is not None:
        for status, n in dense(snapshot.dataset_counts, DATASET_STATUSES):
            yield (status,), float(n)


def _active_tasks(snapshot: Snapshot) -> Iterator[Sample]:
    if snapshot.active_tasks is not None:
        for resource in RESOURCES:
            counts = snapshot.active_tasks.get(resource, {})
            for status, n in dense(counts, ACTIVE_TASK_STATUSES):
                yield (resource, status), float(n)


def _info(snapshot: Snapshot) -> Iterator[Sample]:
    for d in _datasets(snapshot):
        yield (d.label, d.dataset_id, d.group, d.username, d.description), 1.0


def _status(snapshot: Snapshot) -> Iterator[Sample]:
    for d in _datasets(snapshot):
        statuses = list(DATASET_STATUSES)
        if d.status not in statuses:
            statuses.append(d.status)
        for status in statuses:
            yield (d.label, status), 1.0 if status == d.status else 0.0


def _jobs(datasets: Callable[[Snapshot], Iterable[Dataset]], unread_as_zero: bool) -> Sampler:
    """Jobs by status of the ``datasets``.

    With ``unread_as_zero`` a dataset whose job counts were not read counts zero jobs in every
    status, as IceProd's dataset_monitor reports it; else it has no series.
    """

    def sample(snapshot: Snapshot) -> Iterator[Sample]:
        for d in datasets(snapshot):
            if d.jobs is not None or unread_as_zero:
                for status, n in dense(d.jobs or {}, JOB_STATUSES):
                    yield (d.label, status), float(n)

    return sample


def _tasks(datasets: Callable[[Snapshot], Iterable[Dataset]]) -> Sampler:
    """Tasks by task name and status of the ``datasets``."""

    def sample(snapshot: Snapshot) -> Iterator[Sample]:
        for d in datasets(snapshot):
            for name, by_status in (d.tasks or {}).items():
                for status, n in dense(by_status, TASK_STATUSES):
                    yield (d.label, name, status), float(n)

    return sample


def _task_stat(value: Callable[[float], float], field: str) -> Sampler:
    def sample(snapshot: Snapshot) -> Iterator[Sample]:
        for d in _datasets(snapshot):
            for name, stats in (d.task_stats or {}).items():
                raw = getattr(stats, field)
                if raw is not None:
                    yield (d.label, name), value(raw)

    return sample


def _task_gpu(snapshot: Snapshot) -> Iterator[Sample]:
    for d in _datasets(snapshot):
        for name, stats in (d.task_stats or {}).items():
            yield (d.label, name), 1.0 if stats.gpu > 0 else 0.0


def _hours(h: float) -> float:
    return h * HOUR


def _processing(snapshot: Snapshot) -> Iterator[Dataset]:
    """The datasets IceProd's dataset_monitor reports on: processing ones (watched here)."""
    return (d for d in _datasets(snapshot) if d.status == "processing" and d.watched)


def future_resource_hours(datasets: Iterable[Dataset]) -> dict[str, int]:
    """IceProd dataset_monitor's forecast of CPU and GPU hours still to run.

    For every task name with complete tasks: (waiting + queued + processing tasks + jobs not yet
    materialized) x the mean walltime of its complete tasks, summed and truncated like ``int()``.
    """
    hours = {"cpu": 0.0, "gpu": 0.0}
    for d in datasets:
        unmaterialized = (d.jobs_submitted or 0) - sum((d.jobs or {}).values())
        for name, stats in (d.task_stats or {}).items():
            by_status = (d.tasks or {}).get(name, {})
            pending = sum(by_status.get(s, 0) for s in ("waiting", "queued", "processing"))
            resource = "gpu" if stats.gpu > 0 else "cpu"
            hours[resource] += (pending + unmaterialized) * stats.avg_hrs
    return {resource: int(total) for resource, total in hours.items()}


def _compat_future(snapshot: Snapshot) -> Iterator[Sample]:
    for resource, total in future_resource_hours(_processing(snapshot)).items():
        yield (resource,), float(total)


#: task_stats fields exported per task name: (metric, field, conversion, what it is)
_TASK_STAT_METRICS: tuple[tuple[str, str, Callable[[float], float], str], ...] = (
    ("iceprod_dataset_task_walltime_mean_seconds", "avg_hrs", _hours, "Mean walltime of"),
    (
        "iceprod_dataset_task_walltime_stddev_seconds",
        "stddev_hrs",
        _hours,
        "Sample standard deviation of the walltime (absent below 2 tasks) of",
    ),
    ("iceprod_dataset_task_walltime_min_seconds", "min_hrs", _hours, "Shortest walltime of"),
    ("iceprod_dataset_task_walltime_max_seconds", "max_hrs", _hours, "Longest walltime of"),
    ("iceprod_dataset_task_walltime_complete_seconds", "total_hrs", _hours, "Total walltime of"),
    (
        "iceprod_dataset_task_walltime_error_seconds",
        "total_err_hrs",
        _hours,
        "Walltime of the attempts that ended in an error (reset to waiting, or failed and "
        "retried by hand) before these tasks completed, summed over",
    ),
    (
        "iceprod_dataset_task_efficiency_ratio",
        "efficiency",
        float,
        "Good walltime over all walltime (0-1; absent while none was reported: IceProd's 0 then "
        "means unknown, not waste), over",
    ),
)

_D = ("dataset",)
_DT = ("dataset", "task_name")
_TASK_STATS = Endpoint.TASK_STATS.value

SPECS: tuple[MetricSpec, ...] = (
    # --- IceProd health as seen by the exporter
    MetricSpec(
        "iceprod_up",
        Kind.GAUGE,
        "1 if the last poll reached the IceProd API and its dataset list was read, else 0.",
        sampler=_up,
    ),
    MetricSpec(
        "iceprod_exporter_last_successful_poll_timestamp_seconds",
        Kind.GAUGE,
        "Unix time the last successful poll of the IceProd API finished.",
        group=Group.ICEPROD,
        sampler=_last_success,
    ),
    MetricSpec(
        "iceprod_datasets",
        Kind.GAUGE,
        "Datasets in IceProd by status (every known status, 0 included), from GET /datasets."
        + CACHED,
        ("status",),
        sampler=_dataset_counts,
    ),
    MetricSpec(
        "iceprod_active_tasks",
        Kind.GAUGE,
        "IceProd-wide tasks in the states IceProd schedules (idle, waiting, queued, processing) "
        "by resource, as GET /task_counts/status?gpu=true|false splits them: gpu for tasks "
        "requiring at least one GPU, cpu for tasks requiring none (a fractional GPU requirement "
        "is in neither). System or admin token; shard 0 only." + CACHED,
        ("resource", "status"),
        sampler=_active_tasks,
    ),
    # --- per dataset
    MetricSpec(
        "iceprod_dataset_info",
        Kind.GAUGE,
        "Dataset metadata (value 1); join on dataset. From GET /datasets." + CACHED,
        ("dataset", "dataset_id", "group", "username", "description"),
        sampler=_info,
    ),
    MetricSpec(
        "iceprod_dataset_status",
        Kind.GAUGE,
        "1 for the dataset's current status, 0 for the others. From GET /datasets." + CACHED,
        ("dataset", "status"),
        sampler=_status,
    ),
    MetricSpec(
        "iceprod_dataset_priority",
        Kind.GAUGE,
        "Dataset priority as set in IceProd. From GET /datasets." + CACHED,
        _D,
        sampler=_per_dataset(lambda d: d.priority),
    ),
    MetricSpec(
        "iceprod_dataset_start_timestamp_seconds",
        Kind.GAUGE,
        "Unix time the dataset was submitted (start_date). From GET /datasets." + CACHED,
        _D,
        sampler=_per_dataset(lambda d: d.start_timestamp),
    ),
    MetricSpec(
        "iceprod_dataset_truncated",
        Kind.GAUGE,
        "1 if the dataset is truncated: IceProd's dataset_completion completes it once every job "
        "materialized so far is complete, without waiting for the rest of jobs_submitted. "
        "From GET /datasets." + CACHED,
        _D,
        sampler=_per_dataset(lambda d: 1.0 if d.truncated else 0.0),
    ),
    MetricSpec(
        "iceprod_dataset_always_active",
        Kind.GAUGE,
        "1 if the dataset is always active: IceProd never completes it, so it has no end to "
        "progress towards. From GET /datasets." + CACHED,
        _D,
        sampler=_per_dataset(lambda d: 1.0 if d.always_active else 0.0),
    ),
    MetricSpec(
        "iceprod_dataset_jobs_submitted",
        Kind.GAUGE,
        "The dataset's job total as IceProd holds it now (PUT /datasets/{dataset_id}/"
        "jobs_submitted rewrites it); minus the sum of iceprod_dataset_jobs it gives the jobs "
        "not yet materialized (a truncated dataset may complete before they are). "
        "From GET /datasets." + CACHED,
        _D,
        sampler=_per_dataset(lambda d: d.jobs_submitted),
    ),
    MetricSpec(
        "iceprod_dataset_tasks_submitted",
        Kind.GAUGE,
        "The dataset's task total as IceProd holds it now (rewritten with jobs_submitted). "
        "From GET /datasets." + CACHED,
        _D,
        sampler=_per_dataset(lambda d: d.tasks_submitted),
    ),
    MetricSpec(
        "iceprod_dataset_jobs",
        Kind.GAUGE,
        "Materialized jobs by status (every known status, 0 included). "
        "From GET /datasets/{dataset_id}/job_counts/status." + CACHED,
        ("dataset", "status"),
        sampler=_jobs(_datasets, unread_as_zero=False),
    ),
    MetricSpec(
        "iceprod_dataset_tasks",
        Kind.GAUGE,
        "Tasks by task name and status (every known status, 0 included). failed: an error "
        "IceProd does not retry, which needs a person; errors it deems transient reset the task "
        "to waiting instead. From GET /datasets/{dataset_id}/task_counts/name_status." + CACHED,
        ("dataset", "task_name", "status"),
        sampler=_tasks(_datasets),
    ),
    MetricSpec(
        "iceprod_dataset_counted_timestamp_seconds",
        Kind.GAUGE,
        "Unix time the dataset's job and task counts were last read: every cycle while they "
        "change, every quiet_poll_interval once they are quiet." + CACHED,
        _D,
        sampler=_per_dataset(lambda d: d.counted_at),
    ),
    *(
        MetricSpec(
            name,
            Kind.GAUGE,
            f"{text} the task name's complete tasks. From GET {_TASK_STATS} "
            f"(polled every task_stats_interval).{CACHED}",
            _DT,
            sampler=_task_stat(convert, field),
        )
        for name, field, convert, text in _TASK_STAT_METRICS
    ),
    MetricSpec(
        "iceprod_dataset_task_gpu",
        Kind.GAUGE,
        "1 if the task name's complete tasks required GPUs, 0 if they required none (absent "
        f"until one completed); IceProd schedules GPU and CPU tasks apart. From GET {_TASK_STATS} "
        f"(polled every task_stats_interval).{CACHED}",
        _DT,
        sampler=_task_gpu,
    ),
    # --- IceProd's own dataset_monitor names (compatibility mode)
    MetricSpec(
        "iceprod_jobs",
        Kind.GAUGE,
        "Compatibility with IceProd dataset_monitor: jobs of processing datasets by status."
        + CACHED,
        ("dataset", "status"),
        group=Group.COMPAT,
        stability=Stability.DEPRECATED,
        sampler=_jobs(_processing, unread_as_zero=True),
    ),
    MetricSpec(
        "iceprod_tasks",
        Kind.GAUGE,
        "Compatibility with IceProd dataset_monitor: tasks of processing datasets by task name "
        "and status." + CACHED,
        ("dataset", "taskname", "status"),
        group=Group.COMPAT,
        stability=Stability.DEPRECATED,
        sampler=_tasks(_processing),
    ),
    MetricSpec(
        "iceprod_future_resources_hours",
        Kind.GAUGE,
        "Compatibility with IceProd dataset_monitor: forecast CPU/GPU hours of processing "
        "datasets, truncated to whole hours." + CACHED,
        ("resource",),
        group=Group.COMPAT,
        stability=Stability.DEPRECATED,
        sampler=_compat_future,
    ),
    # --- the exporter itself (instrumented directly, see telemetry.py)
    MetricSpec(
        "iceprod_exporter_build_info",
        Kind.GAUGE,
        "Exporter build information (value 1).",
        ("version", "python_version", "rest_tools_version"),
        group=Group.EXPORTER,
    ),
    MetricSpec(
        "iceprod_exporter_datasets_watched",
        Kind.GAUGE,
        "Datasets whose job and task counts this exporter (shard) polls.",
        group=Group.EXPORTER,
    ),
    MetricSpec(
        "iceprod_exporter_oldest_count_timestamp_seconds",
        Kind.GAUGE,
        "When the watched dataset counted longest ago was counted (Unix time; the last poll's "
        "time when none is watched). Quiet and slow datasets are counted every "
        "quiet_poll_interval, so an age well past it means cycles are falling behind.",
        group=Group.EXPORTER,
    ),
    MetricSpec(
        "iceprod_exporter_forbidden_datasets",
        Kind.GAUGE,
        "Datasets whose routes answered 403 to the exporter's token in the last poll "
        "(a permission problem, not an outage).",
        group=Group.EXPORTER,
    ),
    MetricSpec(
        "iceprod_exporter_permission_denied",
        Kind.GAUGE,
        "403 answers in the last poll by endpoint template: routes the token may not read.",
        ("endpoint",),
        group=Group.EXPORTER,
    ),
    MetricSpec(
        "iceprod_exporter_poll_duration_seconds",
        Kind.HISTOGRAM,
        "Duration of poll cycles against the IceProd API.",
        group=Group.EXPORTER,
    ),
    MetricSpec(
        "iceprod_exporter_poll_failures_total",
        Kind.COUNTER,
        "Poll cycles that failed (iceprod_up 0): IceProd unreachable, a call failed for good, "
        "the poll deadline passed, or an unexpected error.",
        group=Group.EXPORTER,
    ),
    MetricSpec(
        "iceprod_exporter_poll_crashes_total",
        Kind.COUNTER,
        "Poll cycles ended by an unexpected error inside the exporter (a bug; see the log "
        "event poll.crashed). Each also counts as a failed poll.",
        group=Group.EXPORTER,
    ),
    MetricSpec(
        "iceprod_exporter_bad_values_total",
        Kind.COUNTER,
        "Values in IceProd's answers dropped because the exposition cannot carry them (out of "
        "range, not finite, not UTF-8, a duplicate dataset number), by field.",
        ("field",),
        group=Group.EXPORTER,
    ),
    MetricSpec(
        "iceprod_exporter_api_requests_total",
        Kind.COUNTER,
        "IceProd API requests sent, by endpoint template (retries included).",
        ("endpoint",),
        group=Group.EXPORTER,
    ),
    MetricSpec(
        "iceprod_exporter_api_request_failures_total",
        Kind.COUNTER,
        "IceProd API requests that failed, by endpoint template and reason.",
        ("endpoint", "reason"),
        group=Group.EXPORTER,
    ),
    MetricSpec(
        "iceprod_exporter_api_request_duration_seconds",
        Kind.HISTOGRAM,
        "Latency of IceProd API requests, by endpoint template.",
        ("endpoint",),
        group=Group.EXPORTER,
    ),
    MetricSpec(
        "iceprod_exporter_api_requests_in_flight",
        Kind.GAUGE,
        "IceProd API requests in flight or waiting for the rate limiter.",
        group=Group.EXPORTER,
    ),
    MetricSpec(
        "iceprod_exporter_http_requests_total",
        Kind.COUNTER,
        "HTTP requests served, by handler (/metrics, /healthz, /readyz, /, other) and status code.",
        ("handler", "code"),
        group=Group.EXPORTER,
    ),
    MetricSpec(
        "iceprod_exporter_http_auth_failures_total",
        Kind.COUNTER,
        "HTTP requests refused for missing or wrong basic-auth credentials (answered 401).",
        group=Group.EXPORTER,
    ),
    MetricSpec(
        "iceprod_exporter_serving_resident_memory_bytes",
        Kind.GAUGE,
        "Resident memory of the process serving HTTP, which keeps the encoded exposition "
        "(process_resident_memory_bytes is the main process's).",
        group=Group.EXPORTER,
    ),
    MetricSpec(
        "iceprod_exporter_token_refreshes_total",
        Kind.COUNTER,
        "Successful OAuth token acquisitions (grants or static token reads).",
        group=Group.EXPORTER,
    ),
    MetricSpec(
        "iceprod_exporter_token_refresh_failures_total",
        Kind.COUNTER,
        "Failed OAuth token acquisitions, by reason.",
        ("reason",),
        group=Group.EXPORTER,
    ),
    MetricSpec(
        "iceprod_exporter_token_expiry_timestamp_seconds",
        Kind.GAUGE,
        "Unix time the current access token expires (0 while unknown: no token yet, or no exp).",
        group=Group.EXPORTER,
    ),
)

BY_NAME: dict[str, MetricSpec] = {spec.name: spec for spec in SPECS}


def spec(name: str) -> MetricSpec:
    """Look a metric up by name; a typo fails loudly at import time of the caller."""
    return BY_NAME[name]
