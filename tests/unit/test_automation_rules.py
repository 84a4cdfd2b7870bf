"""The automation's pure parts: working days, priorities, routes, survey tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from automation import load_config, survey
from automation.config import AutomationConfig, add_working_days, raised

FRIDAY_17 = datetime(2026, 3, 6, 17, 0, tzinfo=UTC)


def test_working_days_skip_weekends() -> None:
    assert add_working_days(FRIDAY_17, 1) == datetime(2026, 3, 9, 17, 0, tzinfo=UTC)  # Monday
    assert add_working_days(FRIDAY_17, 0) == FRIDAY_17
    assert add_working_days(FRIDAY_17 + timedelta(days=1), 0).weekday() == 0  # Saturday -> Monday
    assert add_working_days(FRIDAY_17, 5) == datetime(2026, 3, 13, 17, 0, tzinfo=UTC)


def test_priorities_rise_one_step_and_stop_at_urgent() -> None:
    assert [raised(p) for p in ("low", "normal", "high", "urgent")] == ["normal", "high", "urgent", "urgent"]


def test_the_first_matching_route_wins_and_the_defaults_load() -> None:
    config = load_config()
    assert config.playbook("default", "proposal") is not None
    team = config.route("complaint", "email", "normal")
    assert team is not None and team.name == "escalations"
    team = config.route("question", "web", "normal")
    assert team is not None and team.name == "support"
    assert AutomationConfig().route("question", "web", "normal") is None


def test_rules_refuse_unknown_fields() -> None:
    with pytest.raises(ValueError, match="playbok"):
        AutomationConfig.model_validate({"playbok": []})


def test_survey_tokens_verify_and_refuse_forgeries_and_expiry() -> None:
    key, request_id = b"k" * 32, uuid4()
    expires = FRIDAY_17 + timedelta(days=14)
    token = survey.sign(key, request_id, expires)
    assert survey.verify(key, token, FRIDAY_17) == survey.SurveyToken(request_id, expires)
    with pytest.raises(survey.ExpiredToken):
        survey.verify(key, token, expires)
    for bad in (survey.sign(b"x" * 32, request_id, expires), token + "A", "a.b", "", "not-a-token"):
        with pytest.raises(survey.InvalidToken):
            survey.verify(key, bad, FRIDAY_17)
    # the payload changed (a later expiry) under the old signature
    forged = survey.sign(key, request_id, expires + timedelta(days=365)).split(".")[0] + "." + token.split(".")[1]
    with pytest.raises(survey.InvalidToken):
        survey.verify(key, forged, FRIDAY_17)
