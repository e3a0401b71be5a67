"""The one fake IceProd source of the tests: the poller reads it as it reads the API client."""

from __future__ import annotations

from collections import Counter
from typing import Any

from iceprod_exporter.source import client as api
from iceprod_exporter.source.client import ApiError
from iceprod_exporter.source.labels import Endpoint, Reason


class FakeSource:
    """Answers routes from a dict; an ApiError value is raised instead of returned."""

    def __init__(self) -> None:
        self.datasets: dict[str, dict[str, Any]] = {}
        self.answers: dict[str, Any] = {}
        self.calls: Counter[str] = Counter()
        self.down = False
        self.sent = 0
        self.answers["/task_counts/status?gpu=false"] = {"idle": 5, "waiting": 2}
        self.answers["/task_counts/status?gpu=true"] = {"queued": 1}

    def add(self, dataset_id: str, number: int, status: str = "processing", **extra: Any) -> None:
        self.datasets[dataset_id] = {
            "dataset_id": dataset_id,
            "dataset": number,
            "status": status,
            "jobs_submitted": 2,
            **extra,
        }
        self.answers[f"/datasets/{dataset_id}/job_counts/status"] = {"processing": 2}
        self.answers[f"/datasets/{dataset_id}/task_counts/name_status"] = {
            "generate": {"waiting": 1, "complete": 1}
        }
        self.answers[f"/datasets/{dataset_id}/task_stats"] = {
            "generate": {
                "count": 1,
                "gpu": 0,
                "total_hrs": 1.0,
                "total_err_hrs": 0.0,
                "avg_hrs": 1.0,
                "stddev_hrs": None,
                "min_hrs": 1.0,
                "max_hrs": 1.0,
                "efficiency": 1.0,
            }
        }

    async def get(
        self,
        template: str,
        args: dict[str, str] | None = None,
        *,
        deadline: float | None = None,
        **path: str,
    ) -> Any:
        route = template.format(**path)
        self.calls[template] += 1
        self.sent += 1
        if self.down:
            raise ApiError(template, Reason.CONNECTION, "refused")
        if template == api.DATASETS:
            assert args and "dataset|status" in args["keys"]
            return self.datasets
        if template == Endpoint.ACTIVE_TASKS:
            assert args and args["status"] == "idle|waiting|queued|processing"
            route = f"{route}?gpu={args['gpu']}"
        answer = self.answers[route]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def bad_response(self, template: str, detail: str) -> ApiError:
        return ApiError(template, Reason.BAD_RESPONSE, detail)
