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


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    import re

    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def test_the_readme_is_a_front_door_of_at_most_16_kib_with_the_quick_start_first():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 16 * 1024
    first_screen = "\n".join(readme.splitlines()[:40])
    assert "make run" in first_screen and "/api/completions" in first_screen and "make test" in readme[:4000]


def test_every_link_to_the_docs_points_at_a_page_and_heading_that_exist():
    """Links in the README and docs/, and docs/ pages named in the code, resolve (anchors too)."""
    import re

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # a URL
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and file.suffix == ".md":
                headings = {_anchor(h) for h in re.findall(r"^#+ (.+)$", file.read_text(), re.MULTILINE)}
                if anchor not in headings:
                    broken.append(f"{page.name}: {target} (no such heading)")
    code = [ROOT / "function_app.py", ROOT / "Makefile", *(ROOT / "shared").rglob("*.py"),
            *(ROOT / "devserver").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]
    for source in code:
        for name in re.findall(r"docs/([a-z_-]+\.md)", source.read_text()):
            if not (ROOT / "docs" / name).exists():
                broken.append(f"{source.relative_to(ROOT)}: docs/{name}")
    assert broken == []


def test_no_two_test_modules_share_a_name():
    """The tiers are folders without __init__.py: pytest imports test modules by basename, so two of
    one name in different tiers break collection of the whole suite."""
    from collections import Counter

    names = Counter(path.name for path in (ROOT / "tests").rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []
