"""Status ordering as IceProd 3.2.43 sorts responses (the status lists live in snapshot.py)."""

from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

V = TypeVar("V")


def sort_by_status(values: Mapping[str, V], order: Sequence[str]) -> dict[str, V]:
    """Return `values` re-keyed in status order, unknown statuses last (like status_sort)."""
    return {k: values[k] for k in sorted(values, key=lambda s: _rank(order, s))}


def _rank(order: Sequence[str], status: str) -> int:
    """Position of a status in `order`, or len(order) when unknown."""
    return order.index(status) if status in order else len(order)


def unknown(values: Iterable[str], order: Sequence[str]) -> bool:
    """Whether any of `values` is not a valid status."""
    return any(v not in order for v in values)
