"""What the simulated IceProd saw, for test assertions."""

import threading
from collections import Counter
from dataclasses import dataclass, replace

import jwt


@dataclass
class TokenUse:
    """One bearer token: its exp claim and when and how often it was presented."""

    exp: float | None
    first_seen: float
    last_seen: float
    uses: int = 0
    # requests made at or after exp (the server still accepts them for 60 s of leeway)
    expired_uses: int = 0


def _exp(token: str) -> float | None:
    """The token's exp claim, unverified, or None."""
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        return None
    return float(exp) if isinstance(exp, int | float) else None


class Records:
    """Request counts per route template and the bearer tokens seen."""

    def __init__(self) -> None:
        """Start empty."""
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._tokens: dict[str, TokenUse] = {}

    def saw(self, template: str, token: str | None, now: float) -> None:
        """Record one request to `template`, with its bearer token if any."""
        with self._lock:
            self._counts[template] += 1
            if token is None:
                return
            use = self._tokens.get(token)
            if use is None:
                use = self._tokens[token] = TokenUse(_exp(token), now, now)
            use.last_seen = now
            use.uses += 1
            if use.exp is not None and now >= use.exp:
                use.expired_uses += 1

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
            self._tokens.clear()
