"""The outcome of one cycle: the tally kept while it runs, the report handed on when it ends."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from iceprod_exporter.poll import parse
from iceprod_exporter.source.client import ApiError
from iceprod_exporter.source.labels import DATASET_PROBLEMS, Reason


@dataclass(frozen=True)
class EndpointError:
    """The last failure of one endpoint template."""

    reason: str
    status: int | None
    at: float


@dataclass(frozen=True)
class CycleReport:
    """One finished cycle, as the landing page shows it."""

    finished_at: float
    up: bool
    duration: float
    requests: int
    #: datasets read
    fetched: int
    #: failed calls by reason
    failures: Mapping[str, int]
    #: why the cycle failed, if it did
    error: str | None
    #: the cycle's last failure of each endpoint template that failed
    endpoint_errors: Mapping[str, EndpointError]
    #: an unexpected error ended the cycle
    crashed: bool


@dataclass
class Tally:
    """What one cycle counted as it ran, for its report, the telemetry and the snapshot's ``up``."""

    fetched: int = 0
    requests: int = 0
    failures: Counter[str] = dataclasses.field(default_factory=Counter)
    #: 403 answers by endpoint template: permission problems, not outages
    denied: Counter[str] = dataclasses.field(default_factory=Counter)
    errors: dict[str, ApiError] = dataclasses.field(default_factory=dict)
    rejects: parse.Rejects = dataclasses.field(default_factory=parse.Rejects)
    #: why the whole cycle failed, if it did (the deadline passed, an unexpected error)
    fatal: str | None = None
    crashed: bool = False

    def failed(self, error: ApiError) -> None:
        """Count a failed call."""
        self.failures[error.reason] += 1
        self.errors[error.endpoint] = error
        if error.reason == Reason.FORBIDDEN:
            self.denied[error.endpoint] += 1

    @property
    def healthy(self) -> bool:
        """Whether IceProd answered all it should (a 403 or 404 is about one route, not IceProd)."""
        return self.fatal is None and not set(self.failures) - DATASET_PROBLEMS

    @property
    def error(self) -> str | None:
        """Why the cycle failed: what ended it, else the first failure that is not one route's."""
        if self.fatal is not None:
            return self.fatal
        for error in self.errors.values():
            if error.reason not in DATASET_PROBLEMS:
                return str(error)
        return None

    def report(self, finished_at: float, up: bool, duration: float) -> CycleReport:
        """The cycle's report, once it has ended."""
        return CycleReport(
            finished_at=finished_at,
            up=up,
            duration=duration,
            requests=self.requests,
            fetched=self.fetched,
            failures=dict(self.failures),
            error=self.error,
            endpoint_errors={
                endpoint: EndpointError(error.reason, error.status, finished_at)
                for endpoint, error in self.errors.items()
            },
            crashed=self.crashed,
        )
