"""What the simulated IceProd saw, for test assertions."""

import threading
from collections import Counter
from dataclasses import dataclass, replace

from iceprod_exporter.source.auth import token_expiry


@dataclass
class TokenUse:
    """One bearer token: its exp claim and when and how often it was presented."""

    exp: float | None
    first_seen: float
    last_seen: float
    uses: int = 0
    # requests made at or after exp (the server still accepts them for 60 s of leeway)
    expired_uses: int = 0


class Records:
    """Request counts per route template and the bearer tokens seen."""

    def __init__(self) -> None:
        """Start empty."""
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._cpu: dict[str, float] = {}
        self._tokens: dict[str, TokenUse] = {}

    def saw(self, template: str, token: str | None, now: float) -> None:
        """Record one request to `template`, with its bearer token if any."""
        with self._lock:
            self._counts[template] += 1
            if token is None:
                return
            use = self._tokens.get(token)
            if use is None:
                use = self._tokens[token] = TokenUse(token_expiry(token), now, now)
            use.last_seen = now
            use.uses += 1
            if use.exp is not None and now >= use.exp:
                use.expired_uses += 1

    def spent(self, template: str, cpu_seconds: float) -> None:
        """Charge the CPU time one request to `template` took to answer."""
        with self._lock:
            self._cpu[template] = self._cpu.get(template, 0.0) + cpu_seconds

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds spent answering, per route template (the server's cost of a client)."""
        with self._lock:
            return dict(self._cpu)

    def request_counts(self) -> dict[str, int]:
        """Requests per route template ("*" for unknown paths)."""
        with self._lock:
            return dict(self._counts)

    def tokens(self) -> dict[str, TokenUse]:
        """A snapshot of every bearer token seen."""
        with self._lock:
            return {t: replace(u) for t, u in self._tokens.items()}

    def expired_token_requests(self) -> int:
        """How many requests carried a token at or past its exp."""
        with self._lock:
            return sum(u.expired_uses for u in self._tokens.values())

    def clear(self) -> None:
        """Forget everything seen so far."""
        with self._lock:
            self._counts.clear()
            self._cpu.clear()
            self._tokens.clear()
