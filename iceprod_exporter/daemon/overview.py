"""What the landing page shows about the exporter: its target, polls, token and settings."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from iceprod_exporter import __version__
from iceprod_exporter.config import Settings, redact_url
from iceprod_exporter.model.snapshot import Snapshot
from iceprod_exporter.poll.report import CycleReport, EndpointError
from iceprod_exporter.source.auth import TokenManager

#: how many past cycles the landing page shows
HISTORY = 10


class PollHistory:
    """The last polls' reports and the last error of each endpoint, as the landing page shows.

    Fed by the poller, one report per cycle; read from the heartbeat's thread, so each is swapped
    whole, never changed in place.
    """

    def __init__(self) -> None:
        #: newest first
        self.reports: tuple[CycleReport, ...] = ()
        self.endpoint_errors: Mapping[str, EndpointError] = {}

    def add(self, report: CycleReport) -> None:
        """Keep a cycle's report (and the errors of its endpoints)."""
        self.reports = (report, *self.reports[: HISTORY - 1])
        if report.endpoint_errors:
            self.endpoint_errors = {**self.endpoint_errors, **report.endpoint_errors}


def why_failed(reports: Sequence[CycleReport]) -> str:
    """Why the last poll failed, as its report says (``reports`` newest first)."""
    return (reports[0].error if reports else None) or "no error recorded"


def overview(
    settings: Settings,
    snapshot: Snapshot,
    tokens: TokenManager,
    polls: PollHistory,
    now: float,
) -> dict[str, object]:
    """The landing page's details, from memory only."""

    def ago(t: float | None) -> str:
        return "never" if t is None else f"{now - t:.1f}s ago"

    reports = polls.reports

    return {
        "version": __version__,
        "IceProd API": redact_url(settings.api_url),
        "auth mode": settings.effective_auth_mode().value,
        "IceProd up (last poll)": snapshot.up,
        "why the last poll failed": "-" if snapshot.up or not reports else why_failed(reports),
        "last poll": ago(snapshot.polled_at),
        "last successful poll": ago(snapshot.last_success),
        "poll cycles": snapshot.cycle,
        "datasets watched": len(snapshot.watched()),
        "datasets exposed": len(snapshot.datasets),
        "datasets by status": dict(sorted(Counter(d.status for d in snapshot.watched()).items())),
        "token": _token(tokens, now),
        "last polls": [
            {
                "finished": ago(record.finished_at),
                "up": record.up,
                "duration (s)": round(record.duration, 3),
                "requests": record.requests,
                "datasets fetched": record.fetched,
                "failures": dict(record.failures) or "-",
                "error": record.error or "-",
            }
            for record in reports
        ],
        "last error by endpoint": {
            endpoint: {
                "reason": error.reason,
                "status": error.status if error.status is not None else "-",
                "when": ago(error.at),
            }
            for endpoint, error in sorted(polls.endpoint_errors.items())
        },
        "settings": settings.redacted(),
    }


def _token(tokens: TokenManager, now: float) -> dict[str, str]:
    error = tokens.last_error
    return {
        "state": "ok" if error is None else f"failing: {error}",
        "expires": (
            f"in {tokens.expires_at - now:.0f}s" if tokens.expires_at else "unknown (no exp)"
        ),
    }
