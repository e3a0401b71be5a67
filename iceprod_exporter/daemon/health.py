"""The health rules: when the exporter is live (``/healthz``) and ready (``/readyz``)."""

from __future__ import annotations

from dataclasses import dataclass

from iceprod_exporter.model.snapshot import Snapshot


@dataclass(frozen=True)
class HealthRules:
    """Live unless the poller keeps crashing or stops making progress; ready after one success.

    Not live once the poller crashed ``stall_polls`` times running, or made no progress for
    ``stall_polls`` poll intervals plus one poll's timeout.
    """

    stall_polls: int
    poll_interval: float
    poll_timeout: float

    def liveness(self, *, quiet_for: float, crashes: int, why: str) -> tuple[bool, str]:
        """Whether the exporter is live, and why, from its poller's progress and crashes."""
        stall = self.stall_polls * self.poll_interval + self.poll_timeout
        if crashes >= self.stall_polls:
            return False, f"failing: the last {crashes} polls crashed ({why})"
        if quiet_for > stall:
            return False, f"stalled: no poll progress for {quiet_for:.0f}s (limit {stall:.0f}s)"
        return True, f"ok: poller progressed {quiet_for:.0f}s ago"

    @staticmethod
    def readiness(snapshot: Snapshot) -> tuple[bool, str]:
        """Whether the exporter is ready, and why: once its first poll succeeded."""
        if snapshot.last_success is not None:
            return True, "ok: first poll succeeded"
        return False, "waiting for the first successful poll"
