"""Authentication (bearer JWT) and the coarse role permissions of the command API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from fastapi import HTTPException

from commands.application import Principal

ROLES = (
    "admin",
    "manager",
    "sales_rep",
    "service_agent",
    "marketing",
    "analyst",
    "auditor",
    "data_admin",
    "integration",
)

#: What each role may write. Record-level rules (own / team / shared) come later.
WRITE_SCOPES: dict[str, frozenset[str]] = {
    "admin": frozenset({"customer", "customer.marketing", "opportunity", "interaction", "service", "task",
                        "erasure"}),
    "manager": frozenset({"customer", "customer.marketing", "opportunity", "interaction", "service", "task"}),
    "sales_rep": frozenset({"customer", "customer.marketing", "opportunity", "interaction", "task"}),
    "service_agent": frozenset({"interaction", "service", "task"}),
    "marketing": frozenset({"customer.marketing"}),
    "analyst": frozenset(),
    "auditor": frozenset(),
    "data_admin": frozenset({"customer", "customer.marketing", "erasure"}),
    "integration": frozenset({"customer", "customer.marketing", "opportunity", "interaction", "service"}),
}
#: Roles that may read personal data (others see it masked).
PERSONAL_DATA_ROLES = frozenset(ROLES) - {"analyst"}


@dataclass(frozen=True)
class JwtSettings:
    secret: str
    issuer: str
    audience: str
    algorithm: str = "HS256"
    public_key: str | None = None
    private_key: str | None = None
    leeway_seconds: int = 30

    def verification_key(self) -> str:
        if self.algorithm.startswith("RS"):
            if not self.public_key:
                raise ValueError("RS256 needs a public key")
            return self.public_key
        return self.secret

    def signing_key(self) -> str:
        if self.algorithm.startswith("RS"):
            if not self.private_key:
                raise ValueError("RS256 needs a private key to sign")
            return self.private_key
        return self.secret


class TokenIssuer:
    """Verifies bearer tokens and, for `crm token` and tests, issues them."""

    def __init__(self, settings: JwtSettings):
        if settings.algorithm not in ("HS256", "RS256"):
            raise ValueError("the token algorithm must be HS256 or RS256")
        self.settings = settings

    def issue(self, user_id: str, role: str, *, ttl: timedelta = timedelta(hours=8),
              now: datetime | None = None) -> str:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        now = now or datetime.now(UTC)
        claims = {
            "sub": user_id,
            "role": role,
            "iss": self.settings.issuer,
            "aud": self.settings.audience,
            "iat": int(now.timestamp()),
            "exp": int((now + ttl).timestamp()),
        }
        return jwt.encode(claims, self.settings.signing_key(), algorithm=self.settings.algorithm)

    def verify(self, token: str) -> Principal:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.settings.verification_key(),
                algorithms=[self.settings.algorithm],  # pinned: no "none", no swapping
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=self.settings.leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorised("the token has expired") from None
        except jwt.InvalidTokenError as e:
            raise _unauthorised(f"invalid token: {e}") from None
        role = claims.get("role")
        if role not in ROLES:
            raise _unauthorised("the token names no known role")
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub:
            raise _unauthorised("the token's subject is empty")
        return Principal(id=sub, role=role)


def _unauthorised(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": 'Bearer realm="crm"'})


def require_scope(principal: Principal, scope: str) -> None:
    if scope not in WRITE_SCOPES.get(principal.role, frozenset()):
        raise HTTPException(403, f"the {principal.role} role may not do this ({scope})")
