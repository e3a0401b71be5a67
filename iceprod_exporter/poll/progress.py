"""Liveness: when the poller last showed a sign of life."""

from __future__ import annotations

import time
from collections.abc import Callable


class Progress:
    """When the poller last showed a sign of life: an API answer arrived or a cycle ended.

    Built before the API client and the poller, which both mark it; listeners (the CLI's
    progress line) are told of every mark.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.at = clock()
        self._listeners: list[Callable[[], None]] = []

    def mark(self) -> None:
        """Note a sign of life now."""
        self.at = self._clock()
        for listener in self._listeners:
            listener()

    def listen(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` on every mark; returns the function that stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)
