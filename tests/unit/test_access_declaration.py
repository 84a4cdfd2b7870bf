"""The reach declaration (api/access.py ``REACH``) is whole, and the web UI's copy of
the readable record types (web/src/roles.ts ``READABLE``) says the same."""

from __future__ import annotations

import re
from pathlib import Path

from api.access import READABLE, REACH, RECORD_TYPES, VIEW_RULES
from api.auth import ROLES

ROOT = Path(__file__).resolve().parents[2]


def web_readable() -> dict[str, frozenset[str]]:
    """``READABLE`` as web/src/roles.ts writes it: one line per role, a literal list."""
    text = (ROOT / "web" / "src" / "roles.ts").read_text()
    block = re.search(r"const READABLE: Record<string, string\[\]> = \{\n(.*?)\n\};", text, re.S)
    assert block, "web/src/roles.ts has no READABLE table"
    table: dict[str, frozenset[str]] = {}
    for line in block.group(1).splitlines():
        m = re.fullmatch(r'\s*([a-z_]+): \[((?:"[a-z_]+"(?:, )?)*)\],', line)
        assert m, f"not one role's literal list: {line!r}"
        table[m.group(1)] = frozenset(re.findall(r'"([a-z_]+)"', m.group(2)))
    return table


def test_the_web_ui_reads_what_the_api_lets_each_role_read() -> None:
    assert web_readable() == READABLE


def test_every_role_is_declared() -> None:
    assert set(REACH) == set(ROLES)


def test_every_rule_is_of_a_known_kind() -> None:
    for role, reach in REACH.items():
        assert set(reach.rules) <= {*RECORD_TYPES, "activity"}, role
        assert READABLE[role] == set(reach.rules) - {"activity"}
        # the feed is read with the customers: a role reads it iff it reads customers
        assert ("activity" in reach.rules) == ("customer" in reach.rules), role
    assert set(VIEW_RULES.values()) == {*RECORD_TYPES, "activity"}
