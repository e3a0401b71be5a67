"""docs/design.md's picture and module table match the tree."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DESIGN = ROOT / "docs" / "design.md"
PACKAGE = ROOT / "iceprod_exporter"
#: a row of the module table: | `iceprod_exporter/...py` | concern |
ROW = re.compile(r"^\| `((?:iceprod_exporter|iceprod_simulator)/[^`]*)` \| (.+) \|$", re.M)


def _rows() -> dict[str, str]:
    return dict(ROW.findall(DESIGN.read_text()))


def test_every_module_has_one_row_and_every_row_a_module() -> None:
    modules = {
        str(p.relative_to(ROOT))
        for p in PACKAGE.rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    }
    rows = _rows()
    assert sorted(modules - rows.keys()) == [], "modules without a row in docs/design.md"
    assert sorted(rows.keys() - modules - {"iceprod_simulator/"}) == [], "rows naming no module"
    assert all(concern.strip() for concern in rows.values())


def test_the_table_follows_the_tree_order_of_the_pipeline() -> None:
    """Rows of one subpackage are together, so the table reads like the tree."""
    seen: list[str] = []
    for path in _rows():
        parent = str(Path(path).parent)
        if seen and seen[-1] != parent:
            assert parent not in seen, f"{path}: its subpackage's rows are split"
        seen.append(parent)


def test_the_picture_names_every_subpackage_and_both_processes() -> None:
    text = DESIGN.read_text()
    picture = text.split("```mermaid", 1)[1].split("```", 1)[0]
    subpackages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert [name for name in subpackages if f"{name}/" not in picture] == []
    assert "main process" in picture and "serving process" in picture
