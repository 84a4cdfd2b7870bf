"""The folders import only what docs/architecture.md allows: the rules are read from its
folder table, so the document and the test cannot drift apart."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: every top-level package of the repository (a folder with an __init__.py), tests aside
PROJECT = {d.name for d in ROOT.iterdir() if (d / "__init__.py").is_file() and d.name != "tests"}


def documented_rules() -> dict[str, set[str]]:
    """``folder -> folders it may import`` from docs/architecture.md's folder table
    (`everything` rows are the composition root and the benchmarks: not checked)."""
    rules: dict[str, set[str]] = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not re.fullmatch(r"`[a-z]+`", cells[0]):
            continue
        folder, may = cells[0].strip("`"), cells[2]
        if may == "everything":
            continue
        rules[folder] = set() if may == "nothing" else set(re.findall(r"`([a-z]+)`", may))
    return rules


ALLOWED = documented_rules()


def test_the_document_names_every_folder() -> None:
    # every package has its row; the composition root and the benchmarks may import anything
    assert set(ALLOWED) == PROJECT - {"crm", "bench"}
    assert {"eventstore", "writeapi", "readapi", "automation", "feeds", "analytics"} <= PROJECT
    assert ALLOWED["events"] == set() and ALLOWED["aggregates"] == {"events"}


def project_imports(package: str) -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in PROJECT and top != package:
                    found.add((str(path.relative_to(ROOT)), top))
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_it_may(package: str) -> None:
    forbidden = {(f, top) for f, top in project_imports(package) if top not in ALLOWED[package]}
    assert not forbidden, f"{package} imports {sorted(forbidden)}"


def test_nothing_but_the_composition_root_reads_the_environment() -> None:
    offenders = []
    for package in [*ALLOWED, "crm"]:
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            if ("os.environ" in text or "os.getenv" in text) and package != "crm":
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders


def test_only_the_automation_issues_commands_from_projections() -> None:
    offenders = {f for f, top in project_imports("projections")
                 if top == "commands" and not f.startswith("automation/")}
    assert not offenders, sorted(offenders)
