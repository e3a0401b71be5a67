"""The bounded label values the exporter uses: endpoint templates, failure reasons, value fields.

Every counter with these labels starts at 0 for every combination (see ``telemetry.py``), so a
first failure shows in ``increase()`` and ``rate()`` instead of as a series that appears later.
"""

from __future__ import annotations

from enum import StrEnum


class Endpoint(StrEnum):
    """IceProd REST routes the exporter reads, as endpoint templates (the ``endpoint`` label)."""

    DATASETS = "/datasets"
    JOB_COUNTS = "/datasets/{dataset_id}/job_counts/status"
    TASK_COUNTS_NAME = "/datasets/{dataset_id}/task_counts/name_status"
    TASK_STATS = "/datasets/{dataset_id}/task_stats"
    #: IceProd-wide, read with ``status`` and ``gpu`` filters (the status index keeps it cheap)
    ACTIVE_TASKS = "/task_counts/status"


class Reason(StrEnum):
    """Why an API call or a token acquisition failed (the ``reason`` label)."""

    TIMEOUT = "timeout"
    CONNECTION = "connection"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    OVERLOADED = "overloaded"
    SERVER_ERROR = "server_error"
    CLIENT_ERROR = "client_error"
    BAD_RESPONSE = "bad_response"
    TOKEN = "token"
    DEADLINE = "deadline"
    REJECTED = "rejected"
    CONFIG = "config"
    TOO_LARGE = "too_large"  # a body over max_response_size (after decompression)
    REDIRECT = "redirect"  # sent to another origin (or too many hops): not followed
    EXPIRED = "expired"  # a token expired on arrival: a clock is off


#: reasons an API request can fail with
API_REASONS: tuple[Reason, ...] = (
    Reason.TIMEOUT,
    Reason.CONNECTION,
    Reason.UNAUTHORIZED,
    Reason.FORBIDDEN,
    Reason.NOT_FOUND,
    Reason.OVERLOADED,
    Reason.SERVER_ERROR,
    Reason.CLIENT_ERROR,
    Reason.BAD_RESPONSE,
    Reason.TOKEN,
    Reason.DEADLINE,
    Reason.TOO_LARGE,
    Reason.REDIRECT,
)
#: reasons a token acquisition can fail with
TOKEN_REASONS: tuple[Reason, ...] = (
    Reason.TIMEOUT,
    Reason.CONNECTION,
    Reason.REJECTED,
    Reason.BAD_RESPONSE,
    Reason.CONFIG,
    Reason.TOO_LARGE,
    Reason.REDIRECT,
    Reason.EXPIRED,
)
#: failed calls worth another attempt within the poll's deadline: fast failures only. A timeout
#: is not retried: IceProd hanging is the truth to report, and a retry would only hide it longer.
RETRYABLE = frozenset({Reason.CONNECTION, Reason.OVERLOADED, Reason.SERVER_ERROR})
#: failures that are about one dataset's routes, not about IceProd being unwell
DATASET_PROBLEMS = frozenset({Reason.FORBIDDEN, Reason.NOT_FOUND})


class ValueField(StrEnum):
    """Parts of IceProd's answers that can be dropped as values the exposition cannot carry."""

    DATASET = "dataset"  # the dataset number: missing, not an integer, or out of range
    DATASET_CONFLICT = "dataset_conflict"  # two datasets with the same number
    STATUS = "status"
    DESCRIPTION = "description"
    GROUP = "group"
    USERNAME = "username"
    PRIORITY = "priority"
    START_DATE = "start_date"
    JOBS_SUBMITTED = "jobs_submitted"
    TASKS_SUBMITTED = "tasks_submitted"
    JOB_COUNTS = "job_counts"
    TASK_COUNTS = "task_counts"
    TASK_STATS = "task_stats"
    ACTIVE_TASKS = "active_tasks"
