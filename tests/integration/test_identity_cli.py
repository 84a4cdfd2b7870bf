"""`crm users`, `crm teams` and `crm api-keys` against a real PostgreSQL."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import pytest
from typer.testing import CliRunner

from aggregates import ApiKey, Team, User
from aggregates.user import user_id
from commands.identity import check_api_key, check_password
from crm.cli import app as cli
from projections.directory import Directory
from tests.integration.test_audit_chain import _cli_env

pytestmark = pytest.mark.postgres


def _catch_up(system: Any) -> None:
    system.read.runner(Directory).catch_up()


def test_users_teams_and_api_keys_from_the_command_line(system: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import UTC, datetime

    _cli_env(system, monkeypatch)
    runner = CliRunner()
    team = runner.invoke(cli, ["teams", "create", "Team West"])
    assert team.exit_code == 0, team.output
    team_id = team.stdout.strip()
    assert system.app.load(Team, UUID(team_id)).name == "Team West"
    _catch_up(system)

    made = runner.invoke(cli, ["users", "create", "Wendy", "--role", "sales_rep", "--team", "team west",
                               "--display-name", "Wendy West", "--email", "wendy@example.com"],
                         input="a long enough password\n")
    assert made.exit_code == 0, made.output
    assert made.stdout.strip() == str(user_id("wendy"))
    wendy = check_password(system.app, "wendy", "a long enough password")
    assert wendy is not None and str(wendy.team_id) == team_id and wendy.display_name == "Wendy West"
    events = list(system.app.stored_events(wendy.id))
    assert events[0].meta.actor.id == "crm-cli"

    again = runner.invoke(cli, ["users", "create", "wendy", "--role", "analyst"], input="another password!\n")
    assert again.exit_code == 1 and "username" in again.output
    short = runner.invoke(cli, ["users", "create", "walt", "--role", "analyst"], input="short\n")
    assert short.exit_code == 2 and "password" in short.output
    no_team = runner.invoke(cli, ["users", "create", "walt", "--role", "analyst", "--team", "Nowhere"],
                            input="a long enough password\n")
    assert no_team.exit_code == 2 and "--team" in no_team.output

    _catch_up(system)
    listed = runner.invoke(cli, ["users", "list"])
    assert listed.exit_code == 0, listed.output
    assert "wendy" in listed.stdout and "Team West" in listed.stdout

    issued = runner.invoke(cli, ["api-keys", "issue", "ERP", "--role", "integration"])
    assert issued.exit_code == 0, issued.output
    key = issued.stdout.strip()
    assert key.startswith("crmk_")
    now = datetime.now(UTC)
    checked = check_api_key(system.app, key, now)
    assert checked.principal is not None and checked.principal.role == "integration"
    key_id = checked.principal.id
    assert system.app.load(ApiKey, UUID(key_id)).name == "ERP"
    revoked = runner.invoke(cli, ["api-keys", "revoke", key_id])
    assert revoked.exit_code == 0, revoked.output
    assert check_api_key(system.app, key, now).problem == "the API key was revoked"
    assert runner.invoke(cli, ["api-keys", "revoke", key_id]).exit_code == 1
    assert isinstance(system.app.load(User, user_id("wendy")), User)
