"""The README's layout section names every module of the `mdm` package, and nothing that is gone."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _layout_block() -> str:
    """The code block under the README's `## Layout` heading."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1]


def _listed() -> set[str]:
    return set(re.findall(r"\bmdm/[\w/]+\.py\b", _layout_block()))


def _modules() -> set[str]:
    """Every module file under mdm/ (package __init__ files are the packages themselves)."""
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / "mdm").rglob("*.py") if p.name != "__init__.py"}


def test_every_module_has_a_line_in_the_readme_layout():
    missing = sorted(_modules() - _listed())
    assert not missing, f"README.md's Layout section lacks a line for: {', '.join(missing)}"


def test_the_readme_layout_names_no_missing_module():
    stale = sorted(_listed() - _modules())
    assert not stale, f"README.md's Layout section names modules that do not exist: {', '.join(stale)}"
