"""ApiKey: a credential another system signs in with, acting in one role."""

from __future__ import annotations

from datetime import datetime

from aggregates.base import Aggregate, CommandContext, applies
from aggregates.errors import InvalidTransition, InvalidValue
from aggregates.user import check_role
from events.api_key import ApiKeyIssued, ApiKeyRevoked
from uuid import UUID


class ApiKey(Aggregate):
    type_name = "api_key"

    name: str
    role: str
    expires_at: datetime | None
    revoked: bool

    @classmethod
    def issue(cls, ctx: CommandContext, *, key_id: UUID, name: str, role: str,
              expires_at: datetime | None) -> ApiKey:
        if not name.strip():
            raise InvalidValue("an API key's name must not be blank", field="name")
        check_role(role)
        if expires_at is not None and expires_at <= ctx.recorded_at:
            raise InvalidValue("expires_at must be in the future", field="expires_at")
        key = cls.__new__(cls)
        Aggregate.__init__(key, key_id)
        key._trigger(ApiKeyIssued, ctx, name=name.strip(), role=role, expires_at=expires_at)
        return key

    def revoke(self, ctx: CommandContext) -> None:
        if self.revoked:
            raise InvalidTransition("the API key is already revoked", field="revoked")
        self._trigger(ApiKeyRevoked, ctx)

    @applies(ApiKeyIssued)
    def _issued(self, e: ApiKeyIssued) -> None:
        self.name = e.name
        self.role = e.role
        self.expires_at = e.expires_at
        self.revoked = False

    @applies(ApiKeyRevoked)
    def _revoked(self, e: ApiKeyRevoked) -> None:
        self.revoked = True
