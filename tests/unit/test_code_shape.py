"""Every function of the exporter and its simulator stays small: complexity under 11, < 60 lines.

Complexity is radon's (McCabe's, as ``radon cc`` reports it: grade C starts at 11).
"""

from __future__ import annotations

import ast
from pathlib import Path

from radon.complexity import cc_visit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("iceprod_exporter", "iceprod_simulator")
MAX_COMPLEXITY = 10
MAX_LINES = 59


def _modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_no_function_reaches_complexity_11() -> None:
    over = [
        f"{path.relative_to(ROOT)}:{block.lineno} {block.fullname} ({block.complexity})"
        for path in _modules()
        for block in cc_visit(path.read_text())
        if block.complexity > MAX_COMPLEXITY
    ]
    assert not over, "\n".join(over)


def test_no_function_reaches_60_lines() -> None:
    over = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)"
        for path in _modules()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (
            lines := (node.end_lineno or node.lineno)
            - min(d.lineno for d in [node, *node.decorator_list])
            + 1
        )
        > MAX_LINES
    ]
    assert not over, "\n".join(over)
