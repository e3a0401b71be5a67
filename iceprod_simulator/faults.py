"""Failures a test can switch on while the simulated IceProd runs."""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DatasetFault:
    """How routes carrying one dataset_id misbehave: an error, or a 200 with a raw body."""

    status: int = 403
    reason: str = "authorization failed"
    # when set, answer 200 with this text instead of an error (e.g. a body that is not JSON)
    body: str | None = None


@dataclass
class Faults:
    """Knobs read once per request; each assignment is atomic, so tests may set them any time."""

    delay: float = 0.0
    fail_status: int | None = None
    fail_reason: str | None = None
    # The real overload 503 loses its Retry-After (tornado's send_error clears headers);
    # set this to test clients that honour the header.
    retry_after: int | None = None
    datasets: dict[str, DatasetFault] = field(default_factory=dict)
