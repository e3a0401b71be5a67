"""structlog set-up: JSON lines off a terminal, readable console output on one, secrets masked.

Libraries' log records and Python warnings are rendered by structlog too, and rate limited per
call site: a library that warns once per object of a large answer writes one line a minute,
which says how many it held back, instead of one per object.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Callable, MutableMapping
from enum import StrEnum
from typing import Any, TextIO

import structlog

#: a library call site logs at most once in this many seconds (the next line counts the rest)
LIBRARY_LOG_WINDOW = 60.0
#: call sites remembered at most; past this the table starts over (it only bounds memory)
LIBRARY_LOG_SITES = 1024
#: longest library message kept, in characters
LIBRARY_MESSAGE_MAX = 2000


class LogFormat(StrEnum):
    """Log rendering; ``auto`` picks console on a terminal and JSON lines otherwise."""

    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


REDACTED = "<redacted>"
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Mask this value wherever it would appear in a log event."""
    if value and len(value) >= 4:
        _secrets.add(value)


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        for secret in _secrets:
            value = value.replace(secret, REDACTED)
    return value


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # last line of defence: nothing should log a secret, but if it does it is masked here
    for key, value in event.items():
        event[key] = _mask(value)
    return event


class CallSiteLimiter:
    """At most one pass per key and window; says how many were held back since the last."""

    def __init__(
        self,
        window: float = LIBRARY_LOG_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window = window
        self._clock = clock
        self._sites: dict[object, tuple[float, int]] = {}  # key -> (last pass, held back)

    def admit(self, key: object) -> int | None:
        """None to hold this one back, else how many were held back before it."""
        now = self._clock()
        last = self._sites.get(key)
        if last is not None and now - last[0] < self._window:
            self._sites[key] = (last[0], last[1] + 1)
            return None
        if len(self._sites) >= LIBRARY_LOG_SITES:
            self._sites.clear()
        self._sites[key] = (now, 0)
        return 0 if last is None else last[1]


class LibraryHandler(logging.Handler):
    """Library log records and warnings as structlog events, rate limited per call site."""

    def __init__(self, limiter: CallSiteLimiter | None = None) -> None:
        super().__init__()
        self._limiter = limiter or CallSiteLimiter()
        self._log = structlog.get_logger("library")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.publish(
                (record.name, record.pathname, record.lineno),
                record.levelno,
                record.name,
                record.getMessage(),
                record.exc_info,
            )
        except Exception:
            self.handleError(record)

    def warning(
        self,
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        """``warnings.showwarning``: one more rate-limited event (``file`` is not used)."""
        self.publish(
            ("warning", filename, lineno),
            logging.WARNING,
            "py.warnings",
            f"{category.__name__}: {message} ({filename}:{lineno})",
            None,
        )

    def publish(self, key: object, level: int, name: str, message: str, exc_info: Any) -> None:
        """Log one library event unless its call site logged within the window."""
        held_back = self._limiter.admit(key)
        if held_back is None:
            return
        extra: dict[str, Any] = {"suppressed": held_back} if held_back else {}
        if exc_info:
            extra["exc_info"] = exc_info
        self._log.log(
            level,
            "library.log",
            logger=name,
            message=message[:LIBRARY_MESSAGE_MAX],
            **extra,
        )


def configure(
    level: str = "info", fmt: LogFormat = LogFormat.AUTO, stream: TextIO | None = None
) -> None:
    """Route structlog, library logging (warning and above) and warnings to ``stream``."""
    stream = stream or sys.stderr
    console = fmt is LogFormat.CONSOLE or (fmt is LogFormat.AUTO and stream.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if console
        else structlog.processors.JSONRenderer()
    )
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    handler = LibraryHandler()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    warnings.showwarning = handler.warning
    # APScheduler reports every skipped overlapping run; the poll summary already tells that
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
