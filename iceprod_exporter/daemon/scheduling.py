"""When the daemon polls and checks its token: APScheduler jobs, with a backoff in an outage."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Awaitable, Callable

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from iceprod_exporter.model.snapshot import Snapshot

#: how often the token job checks whether the access token is due for refresh (no I/O otherwise)
TOKEN_CHECK_SECONDS = 1.0
#: first retry delay after a failed poll; doubles up to poll_interval
OUTAGE_BACKOFF_START = 2.0


def outage_delay(failures: int, poll_interval: float) -> float:
    """How long after the ``failures``-th failed poll in a row the next one starts."""
    return min(poll_interval, OUTAGE_BACKOFF_START * 2.0 ** (failures - 1))


class Jobs:
    """A poll every ``poll_interval`` (sooner after a failure, backing off) and a token check.

    ``poll`` never raises but for cancellation; ``failures`` is how many polls in a row failed.
    ``check_token`` keeps the access token fresh; its errors are its own to count and log.
    """

    def __init__(
        self,
        poll_interval: float,
        poll: Callable[[], Awaitable[Snapshot]],
        failures: Callable[[], int],
        check_token: Callable[[], Awaitable[None]],
    ) -> None:
        self._poll_interval = poll_interval
        self._poll = poll
        self._failures = failures
        self._check_token = check_token
        self._scheduler = AsyncIOScheduler()

    def start(self) -> None:
        """Schedule both jobs, the first runs now (on the running event loop)."""
        now = datetime.datetime.now(datetime.UTC)
        self._scheduler.add_job(
            self._poll_job,
            IntervalTrigger(seconds=self._poll_interval),
            id="poll",
            next_run_time=now,
            max_instances=1,  # never two cycles at once
            coalesce=True,
            misfire_grace_time=None,
        )
        self._scheduler.add_job(
            self._check_token,
            IntervalTrigger(seconds=TOKEN_CHECK_SECONDS),
            id="token",
            next_run_time=now,
            max_instances=1,
            coalesce=True,
        )
        self._scheduler.start()

    def shutdown(self) -> None:
        """Stop scheduling; a cycle under way is cancelled with the loop."""
        self._scheduler.shutdown(wait=False)

    async def _poll_job(self) -> None:
        try:
            snapshot = await self._poll()
        except asyncio.CancelledError:
            return  # shutting down mid-poll: nothing to report
        if not snapshot.up:
            delay = outage_delay(self._failures(), self._poll_interval)
            self._scheduler.modify_job(
                "poll",
                next_run_time=datetime.datetime.now(datetime.UTC)
                + datetime.timedelta(seconds=delay),
            )
