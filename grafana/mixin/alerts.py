"""Alerting rules as data.

Severity: ``critical`` = IceProd itself is unusable or nothing is being processed (page);
``warning`` = a dataset, a grid daemon or one of IceProd's housekeeping crons needs a look, or
the monitoring itself is (partly) blind.

IceProd's housekeeping crons (``scheduled_tasks/``) log and exit and export nothing: each
housekeeping alert watches the symptom its cron leaves when it stops (a dataset or job in a
state the cron would have changed) and carries ``cron``, which routes it to the operators even
when it names a dataset.

Alerts about IceProd's state read the recorded series or reduce raw series to one copy (``max
by (dataset)``), so two identical replicas raise one alert. Alerts about the
exporter itself (``iceprod_up``, ``iceprod_exporter_*``) fire per replica on purpose: each
replica polls on its own. Every alert about a dataset carries ``dataset`` and the owner labels
(``group``, ``username``, joined from ``iceprod_dataset_info``), so Alertmanager can route it to
the IceProd group that owns the dataset.
"""

from __future__ import annotations

from .config import Config, percent, seconds, spoken
from .promql import INFO, PROCESSING, TO_RUN, dashboard_url, one_copy, with_owners
from .rules import TRUNCATED, Alert, Group

#: how the description names an owner label
_OWNER_WORDS = {"username": "user"}


def _text(*parts: str) -> str:
    """One line of annotation text (what a folded YAML block of these lines reads as)."""
    return " ".join(parts)


def _dataset(cfg: Config) -> str:
    """``20001 (CORSIKA 20904; group simprod, user alice)``: number, description and owners."""
    owners = ", ".join(
        f"{_OWNER_WORDS.get(label, label)} {{{{ $labels.{label} }}}}" for label in cfg.owner_labels
    )
    return (
        "{{ $labels.dataset }} ("
        f'{{{{ with printf `{INFO}{{dataset="%s"}}` $labels.dataset | query }}}}'
        '{{ with first . }}{{ label "description" . }}; {{ end }}{{ end }}'
        f"{owners})"
    )


def _exporter_alerts(cfg: Config) -> Group:
    board = dashboard_url(cfg, cfg.exporter_uid)
    failures = cfg.api_failure_window
    return Group(
        "iceprod-exporter.alerts",
        (
            Alert(
                "IceProdExporterDown",
                "exporter",
                f'up{{job="{cfg.job}"}} == 0',
                cfg.exporter_down_for,
                "warning",
                "iceprod-exporter {{ $labels.instance }} cannot be scraped",
                _text(
                    "Prometheus has failed to scrape iceprod-exporter at {{ $labels.instance }}",
                    f"for {spoken(cfg.exporter_down_for)}. No IceProd metric is being collected",
                    "from it: check the process, its /healthz endpoint and the network path from",
                    "Prometheus.",
                ),
                board,
                "The exporter's own HTTP endpoint cannot be scraped. Everything else about "
                "IceProd is blind while this fires.",
            ),
            Alert(
                "IceProdAPIDown",
                "exporter",
                "iceprod_up == 0",
                cfg.api_down_for,
                "critical",
                "IceProd API unreachable from {{ $labels.instance }}",
                _text(
                    "iceprod-exporter {{ $labels.instance }} has not been able to read the",
                    f"IceProd API for {spoken(cfg.api_down_for)} (iceprod_up == 0).",
                    "{{- with printf `sum by (reason) (increase("
                    'iceprod_exporter_api_request_failures_total{instance="%s"}'
                    f"[{failures}])) > 0` $labels.instance | query }}}}",
                    f"Failed requests in the last {spoken(failures)} by reason:",
                    '{{- range . }} {{ .Labels.reason }}={{ .Value | printf "%.0f" }}{{ end }}.',
                    "{{- end }}",
                    "Dataset values are served from the last good poll until they are",
                    "max_staleness old, then dropped.",
                ),
                board,
                "The exporter is up but its last poll could not read IceProd's dataset list: "
                "the API is down, unreachable, overloaded, or refusing the exporter. Mutes the "
                "alerts about datasets in the example Alertmanager configuration: their values "
                "are not current.",
            ),
            Alert(
                "IceProdAPITokenRejected",
                "exporter",
                "(iceprod_up == 0)\n"
                "and on (job, instance)\n"
                "(\n"
                "  sum by (job, instance) (\n"
                "    increase(iceprod_exporter_api_request_failures_total"
                f'{{reason=~"unauthorized|forbidden"}}[{failures}])\n'
                "  ) > 0\n"
                ")",
                cfg.token_rejected_for,
                "critical",
                "IceProd API rejects the token of iceprod-exporter {{ $labels.instance }}",
                _text(
                    f"For {spoken(cfg.token_rejected_for)} IceProd has answered iceprod-exporter",
                    "{{ $labels.instance }} with 401/403 and no poll succeeded. The token is",
                    "invalid, expired, has the wrong audience, or lacks the iceprod-system role",
                    "(or admin group) that the global routes need.",
                ),
                board,
                "IceProd answers, but says no to the exporter's token (401 or 403 on the calls "
                "that decide iceprod_up). Per-dataset 403s alone leave iceprod_up at 1 and do "
                "not fire this. Inhibits IceProdAPIDown in alertmanager.yml: the cause is known.",
            ),
            Alert(
                "IceProdExporterMetricsStale",
                "exporter",
                "time() - iceprod_exporter_last_successful_poll_timestamp_seconds"
                f" > {cfg.stale_seconds}",
                cfg.stale_for,
                "warning",
                "IceProd metrics from {{ $labels.instance }} are stale",
                _text(
                    "The last successful poll of iceprod-exporter {{ $labels.instance }}",
                    "finished {{ $value | humanizeDuration }} ago",
                    f"(threshold {spoken(cfg.stale_seconds)}). Dashboards show old values or",
                    "none. If IceProdAPIDown is not firing, the poller is stuck: check the",
                    "exporter's logs and /healthz, and restart it.",
                ),
                board,
                "The last successful poll is older than max_staleness: the exporter has "
                "stopped serving dataset values. Also catches a poller that hangs without "
                "reporting failures (iceprod_up stuck at 1).",
            ),
            Alert(
                "IceProdExporterFallingBehind",
                "exporter",
                "time() - iceprod_exporter_oldest_count_timestamp_seconds"
                f" > {cfg.counts_behind_seconds}\n"
                "unless on (job, instance) iceprod_up == 0",
                cfg.counts_behind_for,
                "warning",
                "iceprod-exporter {{ $labels.instance }} is falling behind",
                _text(
                    "Polls of iceprod-exporter {{ $labels.instance }} succeed, but some watched",
                    "datasets were last counted {{ $value | humanizeDuration }} ago",
                    f"(threshold {spoken(cfg.counts_behind_seconds)}): a poll cycle asks more",
                    "than rate_limit and concurrency let it finish in time. Raise rate_limit,",
                    "or split the datasets over shards (total_shards).",
                ),
                board,
                "Some watched dataset's counts are older than its cadence allows while IceProd "
                "answers: cycles overrun their interval, so changes are seen late.",
            ),
            Alert(
                "IceProdExporterTokenRefreshFailing",
                "exporter",
                "sum by (job, instance) (increase(iceprod_exporter_token_refresh_failures_total"
                f"[{cfg.token_failure_window}])) > 0\n"
                "unless on (job, instance)\n"
                "sum by (job, instance) (increase(iceprod_exporter_token_refreshes_total"
                f"[{cfg.token_failure_window}])) > 0",
                cfg.token_refresh_failing_for,
                "warning",
                "iceprod-exporter {{ $labels.instance }} cannot obtain a token",
                _text(
                    "iceprod-exporter {{ $labels.instance }} has failed to obtain an access",
                    "token, again and again for more than",
                    f"{spoken(cfg.token_refresh_failing_for)}, without a single success in",
                    "between.",
                    "{{- with printf `sum by (reason) (increase("
                    'iceprod_exporter_token_refresh_failures_total{instance="%s"}'
                    f"[{cfg.token_failure_window}])) > 0` $labels.instance | query }}}}",
                    "Reasons:{{ range . }} {{ .Labels.reason }}{{ end }}.",
                    "{{- end }}",
                    "timeout/connection: the issuer is unreachable; rejected: the client secret",
                    "or refresh token is no longer valid; config: the settings are incomplete.",
                ),
                board,
                "Token acquisition keeps failing: failures in the window and not one success. "
                "A single failure that the next attempt fixes does not fire.",
            ),
            Alert(
                "IceProdExporterTokenExpired",
                "exporter",
                "(time() - iceprod_exporter_token_expiry_timestamp_seconds > 0)\n"
                "and (iceprod_exporter_token_expiry_timestamp_seconds > 0)",
                cfg.token_expired_for,
                "warning",
                "The IceProd token of iceprod-exporter {{ $labels.instance }} has expired",
                _text(
                    "The access token of iceprod-exporter {{ $labels.instance }} expired",
                    "{{ $value | humanizeDuration }} ago and has not been replaced.",
                ),
                board,
                "The access token in use has expired (0 means unknown and is ignored). IceProd "
                "accepts tokens up to about a minute past exp, so minutes past expiry means "
                "requests fail.",
            ),
            Alert(
                "IceProdExporterPermissionDenied",
                "exporter",
                "max_over_time(iceprod_exporter_permission_denied"
                f"[{cfg.permission_denied_window}]) > 0",
                cfg.permission_denied_for,
                "warning",
                "iceprod-exporter {{ $labels.instance }} may not read {{ $labels.endpoint }}",
                _text(
                    f"For {spoken(cfg.permission_denied_for)} IceProd has answered requests of",
                    "iceprod-exporter {{ $labels.instance }} to {{ $labels.endpoint }} with 403",
                    'Forbidden (up to {{ $value | printf "%.0f" }} per poll in the last',
                    f"{spoken(cfg.permission_denied_window)}). The token lacks read access to",
                    "this route, so the values it feeds are missing:",
                    '{{- if eq $labels.endpoint "/task_counts/status" }} the IceProd-wide',
                    "backlog by resource kind (iceprod_active_tasks; /task_counts/status needs",
                    "the iceprod-system role or the admin group).",
                    "{{- else }} the datasets the token may not read (see",
                    "iceprod_exporter_forbidden_datasets; grant the token's user or group read",
                    "access).",
                    "{{- end }} This is a permission problem, not an outage.",
                ),
                board,
                "IceProd answers 403 to some routes the exporter reads: the token may not read "
                "them (a missing role, or datasets whose ACL excludes it). Not an outage: "
                "iceprod_up stays 1, but what the route feeds is missing (the IceProd-wide "
                "backlog by resource kind, or some datasets). The gauge counts the 403s of "
                "the last poll only, and the routes of "
                "suspended/errors datasets are read every slow_poll_factor polls, hence the "
                "window. IceProdAPITokenRejected (every route refused) inhibits it.",
            ),
        ),
    )


def _count(expr: str) -> str:
    """Go template: the value of ``expr`` (``%s``: the alert's dataset) as a whole number."""
    return (
        f"{{{{ with printf `{expr}` $labels.dataset | query }}}}"
        '{{ . | first | value | printf "%.0f" }}{{ else }}0{{ end }}'
    )


def _tasks_of(statuses: str) -> str:
    """Go template: the alert's dataset's tasks in ``statuses`` (a regex of statuses)."""
    return _count(f'sum(dataset:dataset_tasks:sum_by_status{{dataset="%s",status=~"{statuses}"}})')


def _jobs(status: str, cfg: Config) -> str:
    """One series per dataset: its materialized jobs in ``status``."""
    series = one_copy(f'iceprod_dataset_jobs{{status="{status}"}}', cfg)
    return f"sum by (dataset) ({series})"


def _tasks(statuses: str) -> str:
    """One series per dataset: its tasks in ``statuses`` (a regex of statuses)."""
    return f'sum by (dataset) (dataset:dataset_tasks:sum_by_status{{status=~"{statuses}"}})'


def _dataset_alerts(cfg: Config) -> Group:
    board = dashboard_url(cfg, cfg.dataset_uid, "?var-dataset={{ $labels.dataset }}")
    stall = cfg.stall_window
    eta = 'dataset:dataset_time_to_completion:seconds{dataset="%s"}'
    return Group(
        "iceprod-datasets.alerts",
        (
            Alert(
                "IceProdDatasetErrors",
                "dataset",
                with_owners(
                    '(max by (dataset) (iceprod_dataset_status{status="errors"}) == 1)', cfg
                ),
                cfg.dataset_errors_for,
                "warning",
                "IceProd dataset {{ $labels.dataset }} is in status errors",
                _text(
                    f"Dataset {_dataset(cfg)} is in status errors.",
                    "{{- with printf `dataset:dataset_tasks:sum_by_status"
                    '{dataset="%s",status="failed"}` $labels.dataset | query }}',
                    'It has {{ . | first | value | printf "%.0f" }} failed tasks.{{ end }}',
                    "A failed task had an error IceProd does not retry. Look at the failed",
                    "tasks' logs, fix the cause, then reset the dataset.",
                ),
                board,
                "A dataset is in status `errors`; the `for:` filters out a status flipped by "
                "hand and back.",
            ),
            Alert(
                "IceProdDatasetStalled",
                "dataset",
                with_owners(
                    "max by (dataset) (\n"
                    '  max_over_time(dataset:dataset_tasks:sum_by_status{status="complete"}'
                    f"[{stall}])\n"
                    '  <= dataset:dataset_tasks:sum_by_status{status="complete"}'
                    f" offset {stall}\n"
                    ")\n"
                    "and on (dataset)\n"
                    f"({_tasks(TO_RUN)} > 0)\n"
                    "and on (dataset)\n"
                    f"({PROCESSING})",
                    cfg,
                ),
                cfg.dataset_stalled_for,
                "warning",
                "IceProd dataset {{ $labels.dataset }} has completed no task in "
                f"{spoken(stall)}",
                _text(
                    f"Dataset {_dataset(cfg)} is processing and has",
                    f"{_tasks_of(TO_RUN)} tasks left to run, but its",
                    f"complete count has not risen in {spoken(stall)}. Check whether its tasks",
                    "are queued at all, and its requirements against the available resources.",
                ),
                board,
                "A processing dataset with runnable work (idle, waiting, queued or processing "
                "tasks) has completed no task in stall_window. The offset keeps datasets younger "
                "than the window from firing. IceProdDatasetStarved (nothing of it even queued) "
                "inhibits it in alertmanager.yml.",
            ),
            Alert(
                "IceProdDatasetStarved",
                "dataset",
                with_owners(
                    f"({_tasks('waiting')} > 0)\n"
                    f"unless on (dataset) ({_tasks('queued|processing')} > 0)\n"
                    f"and on (dataset) ({PROCESSING})",
                    cfg,
                ),
                cfg.dataset_starved_for,
                "warning",
                'IceProd dataset {{ $labels.dataset }} has {{ $value | printf "%.0f" }} tasks '
                f"waiting and none running for {spoken(cfg.dataset_starved_for)}",
                _text(
                    f"Dataset {_dataset(cfg)} is processing and has",
                    '{{ $value | printf "%.0f" }} tasks waiting, but none of its tasks has been',
                    f"queued or processing for {spoken(cfg.dataset_starved_for)}: no grid takes",
                    "its work.",
                    "{{- with printf `max by (task_name) (iceprod_dataset_task_gpu"
                    '{dataset="%s"}) == 1` $labels.dataset | query }} Its task names that',
                    "need GPUs:{{ range . }} {{ .Labels.task_name }}{{ end }}.{{ end }}",
                    "Compare its requirements (GPU, memory, disk, time, site) with what the grids",
                    "offer, and its priority with the other datasets'.",
                ),
                board,
                "A processing dataset has waiting tasks but none queued or processing for "
                "hours: the grids pass it over (requirements no site meets, or a priority "
                "always beaten). Per dataset; IceProdQueueStarved and IceProdResourceStarved "
                "see IceProd as a whole.",
            ),
            Alert(
                "IceProdDatasetTaskFailureRatioHigh",
                "dataset",
                with_owners(
                    f"(dataset:dataset_tasks_failed:ratio > {cfg.failure_ratio:g})\n"
                    "and on (dataset)\n"
                    '(dataset:dataset_tasks:sum_by_status{status="failed"}'
                    f" >= {cfg.failure_min_tasks})\n"
                    "and on (dataset)\n"
                    f"({PROCESSING})",
                    cfg,
                ),
                cfg.failure_ratio_for,
                "warning",
                "IceProd dataset {{ $labels.dataset }}: {{ $value | humanizePercentage }} of "
                "finished tasks failed",
                _text(
                    "{{ $value | humanizePercentage }} of the finished tasks of dataset",
                    f"{_dataset(cfg)} are failed (threshold {percent(cfg.failure_ratio)}, at",
                    f"least {cfg.failure_min_tasks} failed tasks) for",
                    f"{spoken(cfg.failure_ratio_for)}. A failed task had an error IceProd does",
                    "not retry: look at the task logs of the failing task names on the dataset",
                    "dashboard.",
                    f"{{{{- with printf `{eta}` $labels.dataset | query }}}} At the completion",
                    "rate of the last hour the rest takes",
                    "{{ . | first | value | humanizeDuration }}.{{ end }}",
                ),
                board,
                "Too many of a processing dataset's finished tasks are failed, with a minimum "
                "count of failed tasks so that 1 failure out of 3 tasks does not fire. The "
                "description gives the time to completion from "
                "dataset:dataset_time_to_completion:seconds.",
            ),
        ),
    )


def _iceprod_alerts(cfg: Config) -> Group:
    backlog = "iceprod:active_tasks:sum_by_resource_status"
    return Group(
        "iceprod-scheduling.alerts",
        (
            Alert(
                "IceProdQueueStarved",
                "iceprod",
                "sum(\n"
                '  dataset:dataset_tasks:sum_by_status{status="waiting"}\n'
                "  and on (dataset)\n"
                f"  ({PROCESSING})\n"
                ") > 0\n"
                "and on ()\n"
                '(sum(iceprod:dataset_tasks:sum_by_status{status="queued"}) == 0)',
                cfg.queue_starved_for,
                "critical",
                'IceProd has {{ $value | printf "%.0f" }} tasks waiting and none queued',
                _text(
                    '{{ $value | printf "%.0f" }} tasks of processing datasets are waiting to',
                    "run but no task of any dataset has been queued for",
                    f"{spoken(cfg.queue_starved_for)}. Check IceProd's grid daemons (the",
                    f'overview\'s Grids row, up{{job="{cfg.grid_job}"}}) and HTCondor.',
                ),
                dashboard_url(cfg, cfg.overview_uid),
                "Processing datasets have tasks waiting (ready to run) but nothing is queued in "
                "HTCondor anywhere: the queueing side of IceProd (grid daemons) is not "
                "submitting. IceProd-wide on purpose: one low-priority dataset waiting behind "
                "others is normal (IceProdDatasetStarved catches one passed over for hours).",
            ),
            Alert(
                "IceProdResourceStarved",
                "iceprod",
                f'sum by (resource) ({backlog}{{status="waiting"}}) > 0\n'
                "unless on (resource)\n"
                f'sum by (resource) ({backlog}{{status=~"queued|processing"}}) > 0',
                cfg.resource_starved_for,
                "warning",
                'IceProd has {{ $value | printf "%.0f" }} {{ $labels.resource }} tasks waiting '
                "and none queued or processing",
                _text(
                    '{{ $value | printf "%.0f" }} {{ $labels.resource }} tasks are waiting in',
                    "IceProd, but none of that kind has been queued or processing for",
                    f"{spoken(cfg.resource_starved_for)}: no grid takes {{{{ $labels.resource }}}}",
                    "work. Check the grid daemons that serve it (their gpu label on the",
                    "overview's Grids row) and their HTCondor pools.",
                ),
                dashboard_url(cfg, cfg.overview_uid),
                "IceProd schedules GPU and CPU tasks apart: waiting tasks of one kind (from "
                "iceprod_active_tasks, read by shard 0) and none of that kind queued or "
                "processing for hours. Catches the GPU side starving while the CPU side keeps "
                "IceProdQueueStarved quiet.",
            ),
        ),
    )


def _housekeeping_alerts(cfg: Config) -> Group:
    board = dashboard_url(cfg, cfg.dataset_uid, "?var-dataset={{ $labels.dataset }}")
    overdue = cfg.housekeeping_for
    window = cfg.materialization_window
    processing_jobs = _jobs("processing", cfg)
    jobs_in_flight = one_copy('iceprod_dataset_jobs{dataset="%s",status="processing"}', cfg)
    stopped = "IceProd's {} cron has not run, or fails on this dataset: check that it runs and"
    return Group(
        "iceprod-housekeeping.alerts",
        (
            Alert(
                "IceProdDatasetCompletionOverdue",
                "dataset",
                with_owners(
                    "(dataset:dataset_jobs:sum >= on (dataset) dataset:dataset_jobs_planned:sum)\n"
                    f"unless on (dataset) ({processing_jobs} > 0)\n"
                    f"and on (dataset) ({PROCESSING})",
                    cfg,
                ),
                overdue,
                "warning",
                "IceProd dataset {{ $labels.dataset }} is done but still processing",
                _text(
                    f"Dataset {_dataset(cfg)} is processing, but all of its",
                    '{{ $value | printf "%.0f" }} planned jobs are materialized (or it is',
                    f"truncated) and none has been processing for {spoken(overdue)}:",
                    "dataset_completion would have completed it (every job complete) or moved",
                    "it to errors or suspended.",
                    stopped.format("dataset_completion"),
                    "its log. It also stops at the first processing dataset without a config",
                    "(it suspends that one and leaves its loop), so every later dataset waits.",
                ),
                board,
                "A processing dataset that is not always-active, whose planned jobs are all "
                "materialized (always true for a truncated one) and none processing: "
                "dataset_completion completes, errors or suspends exactly such a dataset "
                "(scheduled_tasks/dataset_completion.py).",
                {"cron": "dataset_completion"},
            ),
            Alert(
                "IceProdJobCompletionOverdue",
                "dataset",
                with_owners(
                    f"({processing_jobs} > 0)\n"
                    f"unless on (dataset) ({_tasks(TO_RUN)} > 0)\n"
                    f"and on (dataset) ({PROCESSING})",
                    cfg,
                ),
                overdue,
                "warning",
                'IceProd dataset {{ $labels.dataset }} has {{ $value | printf "%.0f" }} jobs '
                "processing without a task to run",
                _text(
                    f"Dataset {_dataset(cfg)} has",
                    '{{ $value | printf "%.0f" }} jobs processing but no task idle, waiting,',
                    f"queued or processing for {spoken(overdue)}: job_completion would have",
                    "completed them (every task complete), or moved them to errors or",
                    "suspended.",
                    stopped.format("job_completion"),
                    "its log.",
                ),
                board,
                "Jobs of a processing dataset stay processing while none of the dataset's tasks "
                "is active. job_completion works per job, so jobs stuck beside active ones are "
                "not seen: the exporter counts per dataset.",
                {"cron": "job_completion"},
            ),
            Alert(
                "IceProdDatasetCleanupOverdue",
                "dataset",
                with_owners(
                    "(\n"
                    f"  ({_tasks(TO_RUN)} > 0)\n"
                    f"  or on (dataset) ({processing_jobs} > 0)\n"
                    ")\n"
                    "and on (dataset)\n"
                    '(max by (dataset) (iceprod_dataset_status{status=~"suspended|errors"}) == 1)',
                    cfg,
                ),
                overdue,
                "warning",
                "IceProd dataset {{ $labels.dataset }} is suspended or in errors but still has "
                "work in flight",
                _text(
                    f"Dataset {_dataset(cfg)} is suspended or in errors, but has had",
                    f"{_tasks_of(TO_RUN)} tasks idle, waiting, queued or processing",
                    f"and {_count(f'sum({jobs_in_flight})')}",
                    f"jobs processing for {spoken(overdue)}: dataset_cleanup would have",
                    "suspended them, and the grids keep running its tasks meanwhile.",
                    stopped.format("dataset_cleanup"),
                    "its log.",
                ),
                board,
                "A suspended or errors dataset still has active tasks or processing jobs: "
                "PUT .../status changes the dataset only, dataset_cleanup suspends its jobs and "
                "tasks afterwards. Such datasets are read every slow_poll_factor polls.",
                {"cron": "dataset_cleanup"},
            ),
            Alert(
                "IceProdTaskQueueingStalled",
                "iceprod",
                'sum by (resource) (iceprod:active_tasks:sum_by_resource_status{status="idle"})'
                " > 0\n"
                "unless on ()\n"
                "sum(\n"
                "  iceprod:active_tasks:sum_by_resource_status"
                '{status=~"waiting|queued|processing"}\n'
                ") > 0",
                cfg.queue_tasks_for,
                "warning",
                'IceProd has {{ $value | printf "%.0f" }} {{ $labels.resource }} tasks idle and '
                "nothing waiting, queued or processing",
                _text(
                    '{{ $value | printf "%.0f" }} {{ $labels.resource }} tasks are idle in',
                    "IceProd, but no task of any kind has been waiting, queued or processing for",
                    f"{spoken(cfg.queue_tasks_for)}: queue_tasks moves idle tasks to waiting (CPU",
                    "and GPU apart when run with --gpus). IceProd's queue_tasks cron has not run:",
                    "check that it runs (for each kind, if run per kind) and its log. (Idle tasks",
                    "whose dependencies failed also stay idle: then the failed tasks need a",
                    "person.)",
                ),
                dashboard_url(cfg, cfg.overview_uid),
                "Idle tasks exist but no task is waiting, queued or processing IceProd-wide: "
                "queue_tasks, which promotes idle tasks to waiting, is not running; `resource` "
                "names each kind with idle tasks. IceProd-wide, not per kind: queue_tasks leaves "
                "a task idle until its dependencies are complete, and a GPU step between CPU "
                "steps (or the reverse) waits idle while the other kind runs. From "
                "iceprod_active_tasks (shard 0).",
                {"cron": "queue_tasks"},
            ),
            Alert(
                "IceProdMaterializationStalled",
                "dataset",
                with_owners(
                    f"max_over_time(dataset:dataset_jobs:sum[{window}])\n"
                    f"<= dataset:dataset_jobs:sum offset {window}\n"
                    "and on (dataset)\n"
                    "(\n"
                    "  dataset:dataset_jobs:sum\n"
                    "  < on (dataset) max by (dataset) (iceprod_dataset_jobs_submitted)\n"
                    ")\n"
                    f"unless on (dataset) {TRUNCATED}\n"
                    f"and on (dataset) ({PROCESSING})",
                    cfg,
                ),
                window,
                "warning",
                "IceProd dataset {{ $labels.dataset }}: no job materialized in "
                f"{spoken(seconds(window) * 2)}",
                _text(
                    f"Dataset {_dataset(cfg)} is processing and not truncated, has",
                    '{{ $value | printf "%.0f" }} jobs materialized of',
                    _count('max(iceprod_dataset_jobs_submitted{dataset="%s"})'),
                    f"submitted, and the count has not changed in {spoken(seconds(window) * 2)},",
                    "although every run of buffer_jobs_tasks has IceProd's materialization",
                    "service materialize up to 1000 more jobs of each processing dataset.",
                    stopped.format("buffer_jobs_tasks"),
                    "its log, and the materialization service's (a config whose task count",
                    "differs from tasks_per_job fails every run).",
                ),
                board,
                "The materialized job count of a processing, not truncated dataset stays flat "
                "while jobs remain to materialize. buffer_jobs_tasks requests a materialization "
                "of every processing dataset on each run, and the service then buffers it "
                "whatever its waiting tasks and processing jobs (materialize.py run_once with "
                "only_dataset; its throttle applies only without, which no caller uses in "
                "3.2.43). Truncated datasets are left out: their owners asked for no more jobs. "
                "Flat over materialization_window, and `for:` as long.",
                {"cron": "buffer_jobs_tasks"},
            ),
        ),
    )


def _grid_alerts(cfg: Config) -> Group:
    info = f'last_over_time(iceprod_info{{job="{cfg.grid_job}",type="grid",instance="%s"}}[1d])'
    return Group(
        "iceprod-grids.alerts",
        (
            Alert(
                "IceProdGridDown",
                "grid",
                f'up{{job="{cfg.grid_job}"}} == 0',
                cfg.grid_down_for,
                "warning",
                "IceProd grid daemon {{ $labels.instance }} cannot be scraped",
                _text(
                    "Prometheus has failed to scrape the IceProd grid daemon at",
                    "{{ $labels.instance }}",
                    f"{{{{- with printf `{info}` $labels.instance | query }}}}",
                    '{{ with first . }}(site {{ label "name" . }},',
                    '{{ label "queue_type" . }}){{ end }}{{ end }}',
                    f"for {spoken(cfg.grid_down_for)}. While it is down it submits no task to",
                    "its HTCondor pool and reports no finished one to IceProd. Check the",
                    "iceprod.server process, its prometheus port and its HTCondor schedd.",
                ),
                dashboard_url(cfg, cfg.overview_uid),
                "A grid daemon (iceprod.server with its condor plugin) cannot be scraped: its "
                "metrics endpoint lives in the daemon's process, so the daemon is down or "
                "unreachable. /grids says nothing in IceProd 3: its documents are never "
                "updated. The site comes from the daemon's last iceprod_info.",
            ),
        ),
    )


def groups(cfg: Config) -> list[Group]:
    """The alert groups."""
    return [
        _exporter_alerts(cfg),
        _dataset_alerts(cfg),
        _iceprod_alerts(cfg),
        _housekeeping_alerts(cfg),
        _grid_alerts(cfg),
    ]


HEADER = """\
Alerting rules for iceprod-exporter. Load together with recording.yaml (some alerts read it).

Thresholds, windows and `for:` durations come from grafana/mixin/config.py: change them there
and run `make generate`. tests/alerts-test.yaml (beside this file) pins the behaviour at the
shipped values, so a change of threshold needs a matching change there (`promtool test rules`
shows which case moved).

Every alert about a dataset carries the labels dataset, group and username (joined from
iceprod_dataset_info), so Alertmanager can route it to the IceProd group that owns the dataset
(see alertmanager.yml); the housekeeping alerts (label `cron`: an IceProd cron that stopped)
go to the operators instead. Alerts about IceProd's state fire once with HA replicas; alerts
about the exporter itself and IceProdGridDown (per grid daemon target) fire per instance.

The mixin expects three Prometheus jobs (see prometheus.yml): iceprod-exporter (this exporter),
iceprod-grid (IceProd's grid daemons) and condor-history (condor_history_to_prometheus.py).

dashboard_url: https://grafana.example.org is a placeholder (Config.grafana_url). Replace it
with your Grafana's base URL; the dashboard uids are fixed, so the links stay valid across
re-imports.
"""
