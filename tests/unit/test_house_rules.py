"""The house rules the code keeps: small modules, small functions, settings named once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APP_SOURCES = [ROOT / "function_app.py", *sorted((ROOT / "shared").rglob("*.py"))]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


@pytest.mark.parametrize("path", APP_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_over_400_lines_and_no_function_over_60(path):
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def test_the_settings_page_is_generated_from_the_registry():
    from shared.config.registry import markdown_table

    page = (ROOT / "docs" / "settings.md").read_text()
    start = page.index("\n", page.index("<!-- settings table: generated")) + 1
    assert page[start:page.index("<!-- end of the generated table -->")] == markdown_table(), \
        "run: python -m shared.config.registry --write docs/settings.md"


def test_every_setting_the_readme_names_is_in_the_registry():
    import re

    from shared.config.registry import BY_NAME

    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", readme, re.MULTILINE))
    assert named and named <= set(BY_NAME), named - set(BY_NAME)
