"""Users, teams and API keys: given past events, when a command, then new events or a
refusal; and the token buckets of the rate limits, on a clock the test moves."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

import pytest

from aggregates.api_key import ApiKey
from aggregates.errors import InvalidTransition, InvalidValue
from aggregates.team import Team
from aggregates.user import User, user_id
from events.api_key import ApiKeyIssued, ApiKeyRevoked
from events.team import TeamCreated, TeamRenamed
from events.user import (
    UserCreated,
    UserDeactivated,
    UserJoinedTeam,
    UserPasswordChanged,
    UserReactivated,
    UserRoleChanged,
)
from api.limits import Rate, TokenBuckets
from tests.unit.conftest import NOW

TEAM = UUID("00000000-0000-4000-8000-0000000000b1")
OTHER_TEAM = UUID("00000000-0000-4000-8000-0000000000b2")
KEY = UUID("00000000-0000-4000-8000-0000000000b3")
RITA = user_id("rita")


def user_fields(**overrides: object) -> dict[str, object]:
    fields: dict[str, object] = {"username": "rita", "display_name": "Rita Rep", "email": "rita@example.com",
                                 "role": "sales_rep", "team_id": TEAM}
    fields.update(overrides)
    return fields


@pytest.fixture
def rita(event, given):
    def make(*more: object) -> User:
        return given(User, event(UserCreated, RITA, version=1, **user_fields()), *more)  # type: ignore[no-any-return]

    return make


def test_a_users_id_is_their_lower_cased_name():
    assert user_id("Rita") == user_id(" rita ") == RITA
    assert user_id("rita2") != RITA
    assert RITA.version == 5


def test_create_user(ctx, emitted):
    u = User.create(ctx(), username="Rita", display_name="Rita Rep", email="rita@example.com",
                    role="sales_rep", team_id=TEAM)
    assert u.id == RITA
    assert emitted(u) == [(UserCreated, user_fields())]
    assert u.active and u.version == 1


@pytest.mark.parametrize(("username", "role", "field"), [
    ("", "sales_rep", "username"), ("has space", "sales_rep", "username"), ("-dash", "sales_rep", "username"),
    ("x" * 65, "sales_rep", "username"), ("rita", "king", "role"),
])
def test_create_user_refuses_bad_names_and_roles(ctx, refused, username, role, field):
    with refused(InvalidValue, field):
        User.create(ctx(), username=username, display_name=None, email=None, role=role, team_id=None)


def test_display_name_defaults_to_the_username(ctx):
    u = User.create(ctx(), username="Sam", display_name=None, email=None, role="analyst", team_id=None)
    assert (u.username, u.display_name, u.team_id) == ("sam", "sam", None)


def test_role_team_and_password_changes(rita, ctx, emitted):
    u = rita()
    assert u.change_role(ctx("promoted"), "manager")
    assert not u.change_role(ctx(), "manager")  # no change, no event
    assert u.join_team(ctx(), OTHER_TEAM)
    assert not u.join_team(ctx(), OTHER_TEAM)
    assert u.join_team(ctx(), None)
    u.record_password_change(ctx())
    assert u.pending_events[0].meta.reason == "promoted"
    assert emitted(u) == [
        (UserRoleChanged, {"role": "manager", "previous_role": "sales_rep"}),
        (UserJoinedTeam, {"team_id": OTHER_TEAM, "previous_team_id": TEAM}),
        (UserJoinedTeam, {"team_id": None, "previous_team_id": OTHER_TEAM}),
        (UserPasswordChanged, {}),
    ]
    assert (u.role, u.team_id, u.password_changed_at) == ("manager", None, NOW)


def test_role_must_be_known(rita, ctx, refused):
    u = rita()
    with refused(InvalidValue, "role", u):
        u.change_role(ctx(), "superuser")


def test_deactivate_and_reactivate(rita, event, ctx, emitted, refused):
    u = rita()
    u.deactivate(ctx("left"))
    assert not u.active
    with refused(InvalidTransition, "active"):
        u.deactivate(ctx())
    u.reactivate(ctx())
    assert u.active
    with refused(InvalidTransition, "active"):
        u.reactivate(ctx())
    assert emitted(u) == [(UserDeactivated, {}), (UserReactivated, {})]
    again = rita(event(UserDeactivated, RITA, version=2))
    assert not again.active


def test_no_user_event_can_hold_a_password_or_hash():
    for cls in (UserCreated, UserRoleChanged, UserJoinedTeam, UserDeactivated, UserReactivated,
                UserPasswordChanged):
        names = set(cls.__dataclass_fields__)
        assert not {n for n in names if "password" in n or "hash" in n or "secret" in n}, cls


def test_team_create_and_rename(ctx, emitted, refused, event, given):
    t = Team.create(ctx(), team_id=TEAM, name="  North ", manager_id=RITA)
    assert t.rename(ctx(), "North-East")
    assert not t.rename(ctx(), "North-East")
    assert emitted(t) == [(TeamCreated, {"name": "North", "manager_id": RITA}),
                          (TeamRenamed, {"name": "North-East", "previous_name": "North"})]
    with refused(InvalidValue, "name"):
        Team.create(ctx(), team_id=TEAM, name="  ", manager_id=None)
    kept = given(Team, event(TeamCreated, TEAM, name="North", manager_id=None))
    with refused(InvalidValue, "name", kept):
        kept.rename(ctx(), "")


def test_api_key_issue_and_revoke(ctx, emitted, refused):
    expires = NOW + timedelta(days=30)
    k = ApiKey.issue(ctx(), key_id=KEY, name=" ERP ", role="integration", expires_at=expires)
    k.revoke(ctx("rotated"))
    assert emitted(k) == [(ApiKeyIssued, {"name": "ERP", "role": "integration", "expires_at": expires}),
                          (ApiKeyRevoked, {})]
    assert k.revoked
    with refused(InvalidTransition, "revoked"):
        k.revoke(ctx())
    with refused(InvalidValue, "expires_at"):
        ApiKey.issue(ctx(), key_id=KEY, name="old", role="integration", expires_at=NOW)
    with refused(InvalidValue, "role"):
        ApiKey.issue(ctx(), key_id=KEY, name="x", role="root", expires_at=None)
    with refused(InvalidValue, "name"):
        ApiKey.issue(ctx(), key_id=KEY, name=" ", role="integration", expires_at=None)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_token_bucket_allows_a_burst_then_the_rate():
    clock = Clock()
    buckets = TokenBuckets(Rate(per_second=2, burst=3), monotonic=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)
    assert buckets.take("b") == 0.0  # every key has its own bucket
    clock.t += 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("a") == pytest.approx(0.5)
    clock.t += 100  # refills up to the burst, not beyond
    assert [buckets.take("a") for _ in range(4)][-1] == pytest.approx(0.5)


def test_no_rate_means_no_limit():
    buckets = TokenBuckets(Rate(per_second=0, burst=1), monotonic=Clock())
    assert all(buckets.take("a") == 0.0 for _ in range(10_000))


def test_buckets_forget_full_ones_when_too_many_keys():
    clock = Clock()
    buckets = TokenBuckets(Rate(per_second=1, burst=2), monotonic=clock, max_keys=10)
    for i in range(10):
        buckets.take(f"k{i}")
    buckets.take("busy")
    buckets.take("busy")
    clock.t += 10
    buckets.take("new")  # full buckets are dropped to make room
    assert len(buckets._buckets) <= 10


def test_the_commands_accept_exactly_the_roles():
    from typing import get_args

    from commands.identity import ROLES, Role
    from api.auth import ROLES as AUTH_ROLES
    from api.auth import WRITE_SCOPES

    assert set(get_args(Role)) == set(ROLES) == set(AUTH_ROLES) == set(WRITE_SCOPES)
    assert [r for r, scopes in WRITE_SCOPES.items() if "identity" in scopes] == ["admin"]
