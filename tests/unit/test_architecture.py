"""The folders import only what ARCHITECTURE.md allows."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = {"events", "aggregates", "commands", "projections", "readapi", "replay", "crm", "bench"}
ALLOWED = {
    "events": set(),
    "aggregates": {"events"},
    "commands": {"events", "aggregates"},
    "projections": {"events", "commands"},
    "readapi": {"commands", "projections", "replay"},
    "replay": {"events", "aggregates", "projections"},
}


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
                 if top == "commands" and not f.startswith("projections/automation/")}
    assert not offenders, sorted(offenders)
