"""Type checks of the web configuration's YAML values, shared by its sections.

Each takes the value, its dotted key and ``fail`` (which makes the one-line error naming the file
and key), and returns the value in the type its section reads; ``None`` or absent means unset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: makes the error for a key and a problem: ``raise fail(key, problem)``
Fail = Callable[[str, str], Exception]


def mapping(value: Any, key: str, fail: Fail) -> dict[str, Any]:
    """A mapping (empty when unset)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise fail(key, "expected a mapping")
    return value


def string(value: Any, key: str, fail: Fail) -> str | None:
    """A string (``None`` when unset or empty)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise fail(key, "expected a string")
    return value


def strings(value: Any, key: str, fail: Fail) -> tuple[str, ...]:
    """A list of strings (empty when unset)."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise fail(key, "expected a list of strings")
    return tuple(value)


def boolean(value: Any, key: str, fail: Fail) -> bool:
    """``true`` or ``false`` (set: absent keys take their default before this)."""
    if not isinstance(value, bool):
        raise fail(key, "expected true or false")
    return value
