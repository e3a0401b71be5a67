"""Content negotiation for /metrics: the exposition format and whether to gzip."""

from __future__ import annotations

from collections.abc import Mapping

from iceprod_exporter.exposition.formats import Format


def _params(item: str) -> tuple[str, dict[str, str]]:
    value, *rest = item.split(";")
    params = {}
    for p in rest:
        key, sep, val = p.partition("=")
        if sep:
            params[key.strip().lower()] = val.strip().strip('"')
    return value.strip().lower(), params


def _q(params: Mapping[str, str]) -> float:
    try:
        q = float(params.get("q", "1"))
    except ValueError:
        return 0.0
    return q if 0.0 <= q <= 1.0 else 0.0


def negotiate(accept: str) -> Format:
    """The format for an Accept header: OpenMetrics when preferred and understood, else text.

    Anything odd (unknown versions, malformed parameters, garbage) falls back to the text format,
    which every Prometheus reads.
    """
    best: tuple[float, int, Format] | None = None
    for position, item in enumerate(accept.split(",")[:32]):
        media, params = _params(item)
        q = _q(params)
        if q <= 0:
            continue
        if media == "application/openmetrics-text":
            if params.get("version", "1.0.0") not in ("0.0.1", "1.0.0"):
                continue
            fmt = Format.OPENMETRICS
        elif media in ("text/plain", "text/*", "*/*"):
            fmt = Format.TEXT
        else:
            continue
        candidate = (q, -position, fmt)
        if best is None or candidate[:2] > best[:2]:
            best = candidate
    return best[2] if best else Format.TEXT


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether the client takes gzip, honouring q-values (``gzip;q=0`` means no)."""
    star: float | None = None
    for item in accept_encoding.split(",")[:32]:
        coding, params = _params(item)
        if coding in ("gzip", "x-gzip"):
            return _q(params) > 0
        if coding == "*":
            star = _q(params)
    return bool(star and star > 0)
