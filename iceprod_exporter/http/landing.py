"""The landing page: answers "why is it down?" from the exporter's in-memory status.

``Status.details`` holds scalars, mappings (a two-column table) and lists of mappings (a table
with one column per key), nested freely. Everything is escaped; the page runs no script.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

_STYLE = """body{font-family:sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:.3em 0 1em}
th,td{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}
thead th{background:#eee}.ok{color:#070}.bad{color:#b00;font-weight:bold}
td code{white-space:pre-wrap}"""


def _scalar(value: Any) -> str:
    if value is None:
        return "<code>-</code>"
    if isinstance(value, bool):
        return f'<code class="{"ok" if value else "bad"}">{str(value).lower()}</code>'
    if isinstance(value, float):
        return f"<code>{value:g}</code>"
    if isinstance(value, str | int):
        return f"<code>{html.escape(str(value))}</code>"
    return f"<code>{html.escape(json.dumps(value, default=str, sort_keys=True))}</code>"


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def _is_records(value: Any) -> bool:
    return _is_list(value) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _mapping_table(value: Mapping[Any, Any]) -> str:
    """Two columns: key, value."""
    if not value:
        return "<code>(none)</code>"
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{render_value(v)}</td></tr>"
        for k, v in value.items()
    )
    return f"<table>{rows}</table>"


def _records_table(records: Sequence[Mapping[Any, Any]]) -> str:
    """One column per key of any record, in the order the keys first appear."""
    columns: list[str] = []
    for record in records:
        columns += [str(k) for k in record if str(k) not in columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(_record_row(record, columns) for record in records)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _record_row(record: Mapping[Any, Any], columns: list[str]) -> str:
    by_column = {str(k): v for k, v in record.items()}
    return "<tr>" + "".join(f"<td>{render_value(by_column.get(c))}</td>" for c in columns) + "</tr>"


def _bullets(values: Sequence[Any]) -> str:
    if not values:
        return "<code>(none)</code>"
    return "<ul>" + "".join(f"<li>{render_value(v)}</li>" for v in values) + "</ul>"


def render_value(value: Any) -> str:
    """HTML for one value of the details, nested structures as tables."""
    if isinstance(value, Mapping):
        return _mapping_table(value)
    if _is_records(value):
        return _records_table(value)
    if _is_list(value):
        return _bullets(value)
    return _scalar(value)


def render(
    version: str,
    live: bool,
    live_reason: str,
    ready: bool,
    ready_reason: str,
    details: Mapping[str, Any],
) -> str:
    """The whole page: health first, then scalar details, then one section per structure."""
    scalars = {k: v for k, v in details.items() if not isinstance(v, Mapping | list | tuple)}
    sections = {k: v for k, v in details.items() if k not in scalars}
    parts = [
        f'<p>Liveness: <span id="live" class="{"ok" if live else "bad"}">'
        f"{html.escape(live_reason)}</span><br>"
        f'Readiness: <span id="ready" class="{"ok" if ready else "bad"}">'
        f"{html.escape(ready_reason)}</span></p>",
        '<p><a href="metrics">/metrics</a> · <a href="healthz">/healthz</a> · '
        '<a href="readyz">/readyz</a></p>',
    ]
    if scalars:
        parts.append(render_value(scalars))
    for title, value in sections.items():
        parts.append(f"<h2>{html.escape(str(title))}</h2>{render_value(value)}")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<link rel="icon" href="data:,"><title>IceProd exporter</title>'
        f"<style>{_STYLE}</style></head>\n<body><h1>IceProd exporter</h1>"
        f"<p>Version {html.escape(version)}.</p>{''.join(parts)}</body></html>\n"
    )
