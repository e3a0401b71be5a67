"""The one fake clock of the tests: it says what time it is until a test moves it."""

from __future__ import annotations


class FakeClock:
    """A wall clock a test sets (``clock.now = ...``, ``clock.now += ...``); calling it reads it."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
