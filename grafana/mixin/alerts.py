"""Alerting rules as data.

Severity: ``critical`` = IceProd itself is unusable or nothing is being processed (page);
``warning`` = a dataset or a grid needs a look, or the monitoring itself is (partly) blind.

Alerts about IceProd's state read the recorded series or reduce raw series to one copy (``max
by (dataset)``, ``max by (grid)``), so two identical replicas raise one alert. Alerts about the
exporter itself (``iceprod_up``, ``iceprod_exporter_*``) fire per replica on purpose: each
replica polls on its own. Every alert about a dataset carries ``dataset`` and the owner labels
(``group``, ``username``, joined from ``iceprod_dataset_info``), so Alertmanager can route it to
the IceProd group that owns the dataset.
"""

from __future__ import annotations

from .config import Config, percent, spoken
from .promql import INFO, PROCESSING, TO_RUN, dashboard_url, with_owners
from .rules import Alert, Group

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
                    '{{- if eq $labels.endpoint "/grids" }} the grid metrics (iceprod_grid_*;',
                    "/grids needs the iceprod-system role or the admin group).",
                    "{{- else }} the datasets the token may not read (see",
                    "iceprod_exporter_forbidden_datasets; grant the token's user or group read",
                    "access).",
                    "{{- end }} This is a permission problem, not an outage.",
                ),
                board,
                "IceProd answers 403 to some routes the exporter reads: the token may not read "
                "them (a missing role, or datasets whose ACL excludes it). Not an outage: "
                "iceprod_up stays 1, but what the route feeds is missing (grids, or some "
                "datasets). The gauge counts the 403s of the last poll only, and the routes of "
                "suspended/errors datasets are read every slow_poll_factor polls, hence the "
                "window. IceProdAPITokenRejected (every route refused) inhibits it.",
            ),
        ),
    )


def _dataset_alerts(cfg: Config) -> Group:
    board = dashboard_url(cfg, cfg.dataset_uid, "?var-dataset={{ $labels.dataset }}")
    stall = cfg.stall_window
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
                    "Look at the failed tasks' logs, fix the cause, then reset the dataset.",
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
                    "(\n"
                    "  sum by (dataset) (\n"
                    f'    dataset:dataset_tasks:sum_by_status{{status=~"{TO_RUN}"}}\n'
                    "  ) > 0\n"
                    ")\n"
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
                    "{{- with printf `sum(dataset:dataset_tasks:sum_by_status"
                    f'{{dataset="%s",status=~"{TO_RUN}"}})` $labels.dataset | query }}}}',
                    '{{ . | first | value | printf "%.0f" }}{{ end }} tasks left to run, but its',
                    f"complete count has not risen in {spoken(stall)}. Check whether its tasks",
                    "are queued at all, and its requirements against the available resources.",
                ),
                board,
                "A processing dataset with runnable work (idle, waiting, queued or processing "
                "tasks) has completed no task in stall_window. The offset keeps datasets younger "
                "than the window from firing.",
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
                    f"{spoken(cfg.failure_ratio_for)}. Look at the task logs of the failing",
                    "task names on the dataset dashboard.",
                ),
                board,
                "Too many of a processing dataset's finished tasks are failed, with a minimum "
                "count of failed tasks so that 1 failure out of 3 tasks does not fire.",
            ),
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
                    f"{spoken(cfg.queue_starved_for)}. Check IceProd's grid/queue daemons",
                    "(iceprod_grid_* metrics, /grids last_update) and HTCondor.",
                ),
                dashboard_url(cfg, cfg.overview_uid),
                "Processing datasets have tasks waiting (ready to run) but nothing is queued in "
                "HTCondor anywhere: the queueing side of IceProd (grid daemon) is not "
                "submitting. IceProd-wide on purpose: one low-priority dataset waiting behind "
                "others is normal.",
            ),
        ),
    )


def _grid_alerts(cfg: Config) -> Group:
    return Group(
        "iceprod-grids.alerts",
        (
            Alert(
                "IceProdGridSilent",
                "grid",
                "(time() - max by (grid) (iceprod_grid_last_update_timestamp_seconds)"
                f" > {cfg.grid_silent_seconds})\n"
                "* on (grid) group_left (host)\n"
                "topk by (grid) (1, iceprod_grid_info)",
                cfg.grid_silent_for,
                "warning",
                "IceProd grid {{ $labels.grid }} ({{ $labels.host }}) has not reported for "
                "{{ $value | humanizeDuration }}",
                _text(
                    "Grid {{ $labels.grid }} on {{ $labels.host }} last updated IceProd",
                    "{{ $value | humanizeDuration }} ago",
                    f"(threshold {spoken(cfg.grid_silent_seconds)}). While it is silent, tasks",
                    "are probably neither queued on nor collected from that site. Check the",
                    "IceProd grid daemon on {{ $labels.host }} (is it running, can it reach the",
                    "REST API with its token) and its HTCondor schedd.",
                ),
                dashboard_url(cfg, cfg.overview_uid),
                "A grid (HTCondor submit site) registered with IceProd has not reported: its "
                "daemon PATCHes last_update regularly, so it is down, stuck, or cannot reach "
                "the API. The silence only grows, so it fires grid_silent_seconds plus the "
                "`for:` after the last report. Only shard 0 reads /grids; max by (grid) keeps "
                "one alert per grid with HA replicas, and topk one info series per grid while "
                "replicas briefly disagree about its host or version.",
            ),
        ),
    )


def groups(cfg: Config) -> list[Group]:
    """The alert groups."""
    return [_exporter_alerts(cfg), _dataset_alerts(cfg), _grid_alerts(cfg)]


HEADER = """\
Alerting rules for iceprod-exporter. Load together with recording.yaml (some alerts read it).

Thresholds, windows and `for:` durations come from grafana/mixin/config.py: change them there
and run `make generate`. tests/alerts-test.yaml (beside this file) pins the behaviour at the
shipped values, so a change of threshold needs a matching change there (`promtool test rules`
shows which case moved).

Every alert about a dataset carries the labels dataset, group and username (joined from
iceprod_dataset_info), so Alertmanager can route it to the IceProd group that owns the dataset
(see alertmanager.yml). Alerts about IceProd's state fire once with HA replicas; alerts about
the exporter itself fire per replica on purpose.

dashboard_url: https://grafana.example.org is a placeholder (Config.grafana_url). Replace it
with your Grafana's base URL; the dashboard uids are fixed, so the links stay valid across
re-imports.
"""
