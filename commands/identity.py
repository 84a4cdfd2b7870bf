"""Users, teams and API keys: their commands and handlers, and checking credentials.

Password hashes and API key secrets' hashes go beside the events, in their transaction
(``WriteExtras``); no event ever holds one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import Field, PrivateAttr, SecretStr, field_validator

from aggregates.api_key import ApiKey
from aggregates.base import CommandContext
from aggregates.errors import Duplicate, InvalidValue, NotFound
from aggregates.team import Team
from aggregates.user import ROLES, User, normalise_username, user_id
from commands import passwords
from commands.application import CommandService, CrmApplication, Principal, Request, UnitOfWork, WriteResult
from commands.base import Command, Email, When
from eventstore.recorder import ApiKeySecret

__all__ = ["ROLES", "ApiKey", "ApiKeyCheck", "Role", "NotFound", "SignedIn", "Team", "User", "check_api_key",
           "check_password", "issue_api_key", "sign_in", "user_id"]

Role = Literal["admin", "manager", "sales_rep", "service_agent", "marketing", "analyst", "auditor",
               "data_admin", "integration"]
API_KEY_PREFIX = "crmk_"
Password = SecretStr


def _check_password(value: SecretStr) -> SecretStr:
    length = len(value.get_secret_value())
    if length < passwords.MIN_LENGTH:
        raise ValueError(f"a password has at least {passwords.MIN_LENGTH} characters")
    if length > passwords.MAX_LENGTH:
        raise ValueError(f"a password has at most {passwords.MAX_LENGTH} characters")
    return value


class CreateUser(Command):
    username: str = Field(min_length=1, max_length=64, description="Unique, case-insensitive.")
    password: SecretStr = Field(description=f"At least {passwords.MIN_LENGTH} characters.")
    role: Role
    display_name: str | None = Field(default=None, max_length=200)
    email: Email | None = None
    team_id: UUID | None = None

    _password = field_validator("password")(_check_password)


class ChangeUserRole(Command):
    requires_version = True
    role: Role


class MoveUserToTeam(Command):
    requires_version = True
    team_id: UUID | None = Field(description="The team to join; null: no team.")


class DeactivateUser(Command):
    requires_version = True


class ReactivateUser(Command):
    requires_version = True


class ChangePassword(Command):
    password: SecretStr = Field(description=f"The new password, at least {passwords.MIN_LENGTH} characters.")
    current_password: SecretStr | None = Field(
        default=None, description="Required when users change their own password.")

    _password = field_validator("password")(_check_password)


class CreateTeam(Command):
    name: str = Field(min_length=1, max_length=100)
    manager_id: UUID | None = None


class RenameTeam(Command):
    requires_version = True
    name: str = Field(min_length=1, max_length=100)


class IssueApiKey(Command):
    name: str = Field(min_length=1, max_length=100, description="What the key is for, e.g. the system.")
    role: Role
    expires_at: When | None = None

    #: the SHA-256 of the secret (made by ``issue_api_key``, never sent by a caller)
    _secret_sha256: bytes | None = PrivateAttr(default=None)


class RevokeApiKey(Command):
    pass


# -- handlers --------------------------------------------------------------------------
def _target(uow: UnitOfWork) -> UUID:
    assert uow.request.target is not None
    return uow.request.target


def create_user(cmd: CreateUser, uow: UnitOfWork, ctx: CommandContext) -> User:
    uid = user_id(cmd.username)
    try:
        uow.get(User, uid)
    except NotFound:
        pass
    else:
        raise Duplicate(f"a user named {normalise_username(cmd.username)!r} exists",
                        field="username", existing_user_id=str(uid))
    if cmd.team_id is not None:
        uow.get_reference(Team, cmd.team_id, "team_id")
    user = User.create(ctx, username=cmd.username, display_name=cmd.display_name, email=cmd.email,
                       role=cmd.role, team_id=cmd.team_id)
    uow.add(user)
    uow.extras.passwords.append((user.id, passwords.hash_password(cmd.password.get_secret_value())))
    return user


def change_role(cmd: ChangeUserRole, uow: UnitOfWork, ctx: CommandContext) -> User:
    user = uow.get(User, _target(uow))
    if user.change_role(ctx, cmd.role):
        uow.extras.end_tokens.append(user.id)  # no token goes on acting in the old role
    return user


def move_to_team(cmd: MoveUserToTeam, uow: UnitOfWork, ctx: CommandContext) -> User:
    user = uow.get(User, _target(uow))
    if cmd.team_id is not None:
        uow.get_reference(Team, cmd.team_id, "team_id")
    if user.join_team(ctx, cmd.team_id):
        uow.extras.end_tokens.append(user.id)  # nor for the old team
    return user


def deactivate(cmd: DeactivateUser, uow: UnitOfWork, ctx: CommandContext) -> User:
    user = uow.get(User, _target(uow))
    user.deactivate(ctx)
    uow.extras.sign_in.append((user.id, False))
    return user


def reactivate(cmd: ReactivateUser, uow: UnitOfWork, ctx: CommandContext) -> User:
    user = uow.get(User, _target(uow))
    user.reactivate(ctx)
    uow.extras.sign_in.append((user.id, True))
    return user


def change_password(cmd: ChangePassword, uow: UnitOfWork, ctx: CommandContext) -> User:
    user = uow.get(User, _target(uow))
    if cmd.current_password is not None:
        credential = uow.app.recorder.credential(user.id)  # type: ignore[attr-defined]
        stored = credential.password_hash if credential is not None else None
        if not passwords.verify_password(stored, cmd.current_password.get_secret_value()):
            raise InvalidValue("the current password is not right", field="current_password")
    user.record_password_change(ctx)
    uow.extras.passwords.append((user.id, passwords.hash_password(cmd.password.get_secret_value())))
    uow.extras.end_tokens.append(user.id)  # nor with the old password's sign-ins
    return user


def create_team(cmd: CreateTeam, uow: UnitOfWork, ctx: CommandContext) -> Team:
    if cmd.manager_id is not None:
        uow.get_reference(User, cmd.manager_id, "manager_id")
    team = Team.create(ctx, team_id=ctx.new_id(), name=cmd.name, manager_id=cmd.manager_id)
    uow.add(team)
    return team


def rename_team(cmd: RenameTeam, uow: UnitOfWork, ctx: CommandContext) -> Team:
    team = uow.get(Team, _target(uow))
    team.rename(ctx, cmd.name)
    return team


def issue(cmd: IssueApiKey, uow: UnitOfWork, ctx: CommandContext) -> ApiKey:
    digest = cmd._secret_sha256
    if digest is None:
        raise TypeError("an API key is issued through issue_api_key, which makes its secret")
    key = ApiKey.issue(ctx, key_id=ctx.new_id(), name=cmd.name, role=cmd.role, expires_at=cmd.expires_at)
    uow.add(key)
    uow.extras.api_keys.append(ApiKeySecret(key.id, digest, key.role, key.expires_at))
    return key


def revoke(cmd: RevokeApiKey, uow: UnitOfWork, ctx: CommandContext) -> ApiKey:
    key = uow.get(ApiKey, _target(uow))
    key.revoke(ctx)
    uow.extras.revoked_api_keys.append(key.id)
    return key


HANDLERS = {
    CreateUser: create_user,
    ChangeUserRole: change_role,
    MoveUserToTeam: move_to_team,
    DeactivateUser: deactivate,
    ReactivateUser: reactivate,
    ChangePassword: change_password,
    CreateTeam: create_team,
    RenameTeam: rename_team,
    IssueApiKey: issue,
    RevokeApiKey: revoke,
}


# -- signing in ------------------------------------------------------------------------
@dataclass(frozen=True)
class SignedIn:
    """A user who gave the right password, and the generation of tokens to issue them."""

    user: User
    generation: int


def sign_in(app: CrmApplication, username: str, password: str) -> SignedIn | None:
    """The active user with this name and password, and their tokens' generation; None for
    any mismatch (an unknown name costs one hash verification too, like a wrong password).

    The generation is read before the user's events: a token never carries a role or team
    older than its generation (a change in between makes the token one generation behind,
    so it is refused, never the other way round)."""
    uid = user_id(username)
    credential = app.recorder.credential(uid)  # type: ignore[attr-defined]
    stored = credential.password_hash if credential is not None else None
    if not passwords.verify_password(stored, password):
        return None
    assert credential is not None and stored is not None
    try:
        user = app.load(User, uid)
    except NotFound:
        return None
    if passwords.needs_rehash(stored):
        app.recorder.rehash_password(uid, stored, passwords.hash_password(password))  # type: ignore[attr-defined]
    return SignedIn(user, credential.generation) if user.active else None


def check_password(app: CrmApplication, username: str, password: str) -> User | None:
    """The active user with this name and password; None for any mismatch."""
    signed_in = sign_in(app, username, password)
    return signed_in.user if signed_in is not None else None


def _secret_digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def issue_api_key(service: CommandService, command: IssueApiKey, request: Request) -> tuple[WriteResult, str | None]:
    """Issue a key; the result and the key to hand over (None when an earlier request with
    the same Idempotency-Key issued it: its secret was shown then, and only then)."""
    secret = secrets.token_urlsafe(32)
    command._secret_sha256 = _secret_digest(secret)
    result = service.execute(command, request)
    if result.replayed:
        return result, None
    return result, f"{API_KEY_PREFIX}{result.id.hex}_{secret}"


@dataclass(frozen=True)
class ApiKeyCheck:
    """The outcome of checking a presented API key."""

    principal: Principal | None
    problem: str | None = None


def check_api_key(app: CrmApplication, presented: str, now: datetime) -> ApiKeyCheck:
    """Who the key is, or why it is refused (unknown, wrong secret, revoked, expired)."""
    body = presented.removeprefix(API_KEY_PREFIX)
    key_hex, sep, secret = body.partition("_")
    if not presented.startswith(API_KEY_PREFIX) or not sep or len(key_hex) != 32 or not secret:
        return ApiKeyCheck(None, "not an API key of this CRM")
    try:
        key_id = UUID(hex=key_hex)
    except ValueError:
        return ApiKeyCheck(None, "not an API key of this CRM")
    stored = app.recorder.api_key_secret(key_id)  # type: ignore[attr-defined]
    digest = _secret_digest(secret)
    if stored is None or not hmac.compare_digest(stored.secret_sha256, digest):
        return ApiKeyCheck(None, "unknown API key")
    if stored.revoked_at is not None:
        return ApiKeyCheck(None, "the API key was revoked")
    if stored.expires_at is not None and stored.expires_at <= now:
        return ApiKeyCheck(None, "the API key has expired")
    return ApiKeyCheck(Principal(id=str(key_id), role=stored.role))
