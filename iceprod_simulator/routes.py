"""The read routes of IceProd 3.2.43: roles, parameters and response bodies."""

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

from tornado.web import HTTPError
from wipac_dev_tools import strtobool

from iceprod_exporter.model.snapshot import DATASET_STATUSES, TASK_STATUSES
from iceprod_simulator import queries
from iceprod_simulator.states import unknown
from iceprod_simulator.store import Doc, Store

ALL_ROLES = ("admin", "user", "system")
SERVICE_ROLES = ("admin", "system")
GRIDS_LIMIT = 1000  # MultiGridsHandler's to_list(1000)


@dataclass(frozen=True)
class Call:
    """What a route needs from one request."""

    store: Store
    path: Mapping[str, str]
    # a query argument as RestHandler.get_argument reads it, or None when absent
    arg: Callable[[str], str | None]
    # the per-row read check (manual_attr_auth) for routes that list datasets
    readable: Callable[[str], bool]


@dataclass(frozen=True)
class Route:
    """One route: its template, the real handler's class name, roles and body."""

    template: str
    handler: str
    roles: tuple[str, ...]
    dataset_acl: bool
    respond: Callable[[Call], dict[str, Any]]

    @property
    def pattern(self) -> str:
        """The tornado URL pattern; path arguments match word characters like the real routes."""
        return re.sub(r"\{(\w+)\}", r"(?P<\1>\\w+)", self.template)


def _pipe_list(call: Call, name: str) -> list[str] | None:
    """A `|`-separated argument, or None when absent or empty."""
    value = call.arg(name)
    return value.split("|") if value else None


def _status_filter(call: Call, allowed: Sequence[str], reason: str) -> list[str] | None:
    """The `status` argument, rejected with 400 `reason` when it names an unknown status."""
    statuses = _pipe_list(call, "status")
    if statuses is not None and unknown(statuses, allowed):
        raise HTTPError(400, reason=reason)
    return statuses


def _gpu_filter(call: Call) -> bool | None:
    """The `gpu` argument; a value strtobool rejects raises, which the handler turns into 500."""
    gpu = call.arg("gpu")
    return None if gpu is None else strtobool(gpu)


def _found(doc: Doc | None, reason: str) -> Doc:
    """The document, or 404 with `reason`."""
    if doc is None:
        raise HTTPError(404, reason=reason)
    return doc


def _datasets(call: Call) -> dict[str, Any]:
    """GET /datasets."""
    keys = _pipe_list(call, "keys")
    return queries.list_datasets(
        call.store,
        statuses=_status_filter(call, DATASET_STATUSES, "unknown status"),
        groups=_pipe_list(call, "groups"),
        users=_pipe_list(call, "users"),
        keys=[k for k in keys if k] if keys else None,
        readable=call.readable,
    )


def _dataset(call: Call) -> dict[str, Any]:
    """GET /datasets/{dataset_id}."""
    return _found(call.store.datasets.get(call.path["dataset_id"]), "Dataset not found")


def _dataset_summaries(call: Call) -> dict[str, Any]:
    """GET /dataset_summaries/status."""
    return queries.dataset_summaries(call.store, call.readable)


def _job_counts(call: Call) -> dict[str, Any]:
    """GET /datasets/{dataset_id}/job_counts/status."""
    return queries.job_counts(call.store, call.path["dataset_id"])


def _dataset_task_counts(call: Call) -> dict[str, Any]:
    """GET /datasets/{dataset_id}/task_counts/status."""
    return queries.task_counts(
        call.store.tasks_of(call.path["dataset_id"]),
        _status_filter(call, TASK_STATUSES, "Unknown task status"),
        _gpu_filter(call),
    )


def _task_counts(call: Call) -> dict[str, Any]:
    """GET /task_counts/status (every task)."""
    return queries.task_counts(
        call.store.tasks.values(),
        _status_filter(call, TASK_STATUSES, "Unknown task status"),
        _gpu_filter(call),
    )


def _name_status(call: Call) -> dict[str, Any]:
    """GET /datasets/{dataset_id}/task_counts/name_status."""
    return queries.name_status_counts(call.store, call.path["dataset_id"])


def _task_stats(call: Call) -> dict[str, Any]:
    """GET /datasets/{dataset_id}/task_stats."""
    return queries.task_stats(call.store, call.path["dataset_id"])


def _grids(call: Call) -> dict[str, Any]:
    """GET /grids."""
    return {g["grid_id"]: g for g in islice(call.store.grids.values(), GRIDS_LIMIT)}


def _grid(call: Call) -> dict[str, Any]:
    """GET /grids/{grid_id}."""
    return _found(call.store.grids.get(call.path["grid_id"]), "Grid not found")


def _config(call: Call) -> dict[str, Any]:
    """GET /config/{dataset_id}, without its dataset_id."""
    config = _found(call.store.configs.get(call.path["dataset_id"]), "Config not found")
    return {k: v for k, v in config.items() if k != "dataset_id"}


ROUTES: dict[str, Route] = {
    r.template: r
    for r in (
        Route("/datasets", "MultiDatasetHandler", ALL_ROLES, False, _datasets),
        Route("/datasets/{dataset_id}", "DatasetHandler", ALL_ROLES, True, _dataset),
        Route(
            "/dataset_summaries/status",
            "DatasetSummariesStatusHandler",
            ALL_ROLES,
            False,
            _dataset_summaries,
        ),
        Route(
            "/datasets/{dataset_id}/job_counts/status",
            "DatasetJobCountsStatusHandler",
            ALL_ROLES,
            True,
            _job_counts,
        ),
        Route(
            "/datasets/{dataset_id}/task_counts/status",
            "DatasetTaskCountsStatusHandler",
            ALL_ROLES,
            True,
            _dataset_task_counts,
        ),
        Route(
            "/datasets/{dataset_id}/task_counts/name_status",
            "DatasetTaskCountsNameStatusHandler",
            ALL_ROLES,
            True,
            _name_status,
        ),
        Route(
            "/datasets/{dataset_id}/task_stats",
            "DatasetTaskStatsHandler",
            ALL_ROLES,
            True,
            _task_stats,
        ),
        Route("/task_counts/status", "TaskCountsStatusHandler", SERVICE_ROLES, False, _task_counts),
        Route("/grids", "MultiGridsHandler", SERVICE_ROLES, False, _grids),
        Route("/grids/{grid_id}", "GridsHandler", SERVICE_ROLES, False, _grid),
        Route("/config/{dataset_id}", "ConfigHandler", ALL_ROLES, True, _config),
    )
}
