"""The exporter's health, as the health endpoints and the landing page report it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Status:
    """What the health endpoints and the landing page report."""

    live: bool
    live_reason: str
    ready: bool
    ready_reason: str
    details: Mapping[str, Any] = field(default_factory=dict)
