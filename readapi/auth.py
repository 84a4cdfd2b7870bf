"""Authentication (bearer JWT) and the coarse role permissions of the command API."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import jwt
from fastapi import HTTPException, Request

from commands.application import CrmApplication, Principal
from commands.base import text_problem
from commands.identity import ROLES, check_api_key
from readapi.limits import RateLimits

__all__ = ["PERSONAL_DATA_ROLES", "ROLES", "WRITE_SCOPES", "Authenticator", "JwtSettings", "TokenIssuer"]

#: What each role may write. Record-level rules (own / team / shared) come later.
WRITE_SCOPES: dict[str, frozenset[str]] = {
    "admin": frozenset({"customer", "customer.marketing", "opportunity", "interaction", "service", "task",
                        "identity", "erasure"}),
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


#: Verified tokens remembered per process (forgotten all at once when there are more).
MAX_VERIFIED_TOKENS = 10_000


class TokenIssuer:
    """Verifies bearer tokens and, for `crm token` and tests, issues them."""

    def __init__(self, settings: JwtSettings):
        if settings.algorithm not in ("HS256", "RS256"):
            raise ValueError("the token algorithm must be HS256 or RS256")
        self.settings = settings
        # Tokens already verified: the principal until the token expires (as jwt.decode
        # would say: exp + leeway). A caller sends the same token for many requests; its
        # signature and claims need checking once (~60 µs each time, 10 % of a read).
        self._verified: dict[str, tuple[Principal, float]] = {}

    def issue(self, user_id: str, role: str, *, ttl: timedelta = timedelta(hours=8),
              now: datetime | None = None, team_id: str | None = None, auth_time: int | None = None) -> str:
        """A signed token; ``auth_time`` is when the user signed in (kept across refreshes;
        the token's own issue time when not given)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        for name, value in (("user id", user_id), ("team id", team_id)):
            problem = text_problem(value) if value is not None else None
            if problem is not None:  # it becomes the actor of events and a key of queries
                raise ValueError(f"the {name} {problem}")
        now = now or datetime.now(UTC)
        claims: dict[str, Any] = {
            "sub": user_id,
            "role": role,
            "iss": self.settings.issuer,
            "aud": self.settings.audience,
            "iat": int(now.timestamp()),
            "exp": int((now + ttl).timestamp()),
            "jti": uuid.uuid4().hex,
            "auth_time": int(now.timestamp()) if auth_time is None else auth_time,
        }
        if team_id is not None:
            claims["team"] = team_id
        return jwt.encode(claims, self.settings.signing_key(), algorithm=self.settings.algorithm)

    def verify(self, token: str) -> Principal:
        known = self._verified.get(token)
        if known is not None and time.time() < known[1]:
            return known[0]
        claims = self.claims(token)
        principal = self.principal(claims)
        # Remembered until the token expires (as jwt.decode would say: exp + leeway); a
        # token with a not-before time is checked every time, never remembered.
        expires = (float("-inf") if "nbf" in claims
                   else float(claims["exp"]) + self.settings.leeway_seconds)
        if len(self._verified) >= MAX_VERIFIED_TOKENS:
            self._verified.clear()
        self._verified[token] = (principal, expires)
        return principal

    def claims(self, token: str) -> dict[str, Any]:
        """The claims of a token signed by this issuer and not expired (else 401)."""
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
        return claims

    @staticmethod
    def principal(claims: dict[str, Any]) -> Principal:
        role = claims.get("role")
        if role not in ROLES:
            raise _unauthorised("the token names no known role")
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub:
            raise _unauthorised("the token's subject is empty")
        team = claims.get("team")
        if team is not None and not isinstance(team, str):
            raise _unauthorised("the token's team is not a string")
        # the subject becomes the actor of events, the team a key of queries: accepted text
        problem = text_problem(sub) or (text_problem(team) if team is not None else None)
        if problem is not None:
            raise _unauthorised(f"the token's subject or team {problem}")
        return Principal(id=sub, role=role, team_id=team)


class Authenticator:
    """Who a request comes from: a bearer JWT (people, `crm token`) or an API key
    (systems, as ``Authorization: Bearer crmk_...`` or ``X-API-Key``), and the rate
    limits of callers.

    A user's token stops working when the user is deactivated: each request checks the
    user's sign-in state (``crm_credentials.active``, written with the deactivation's
    event), remembered per process for ``active_cache_seconds`` and forgotten at once
    by this process's own deactivations. Subjects that are no user (tokens made by
    `crm token` for scripts and tests) are trusted on their signature alone.
    """

    def __init__(self, app: CrmApplication, tokens: TokenIssuer, limits: RateLimits, *,
                 active_cache_seconds: float = 2.0, api_key_touch_seconds: float = 60.0,
                 access_token_ttl: timedelta = timedelta(minutes=15),
                 max_session: timedelta = timedelta(hours=12),
                 monotonic: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.app = app
        self.tokens = tokens
        self.limits = limits
        self.access_token_ttl = access_token_ttl
        #: how long after signing in a token can still be refreshed
        self.max_session = max_session
        self._cache_seconds = active_cache_seconds
        self._touch_seconds = api_key_touch_seconds
        self._monotonic = monotonic
        self._now = now
        self._lock = threading.Lock()
        self._active: dict[UUID, tuple[float, bool]] = {}
        self._touched: dict[UUID, float] = {}

    def authenticate(self, request: Request, authorization: str | None, api_key: str | None) -> Principal:
        """The caller, rate limited; 401 for a missing or bad credential, 429 over the limit."""
        try:
            principal = self._identify(authorization, api_key)
        except HTTPException:
            self.limits.check_caller(f"address:{client_address(request)}")
            raise
        self.limits.check_caller(f"principal:{principal.id}")
        return principal

    def authenticate_known(self, request: Request, authorization: str | None,
                           api_key: str | None) -> Principal | None:
        """``authenticate`` when it needs no database (a bearer JWT whose user's sign-in
        state is remembered, or that names no user); else None: call ``authenticate``
        off the event loop. Raises as ``authenticate`` does."""
        if api_key or not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or token.startswith("crmk_"):
            return None
        try:
            principal = self.tokens.verify(token)
            active = self._known_active(principal.id)
            if active is None:
                return None
            if not active:
                raise _unauthorised("the user is deactivated")
        except HTTPException:
            self.limits.check_caller(f"address:{client_address(request)}")
            raise
        self.limits.check_caller(f"principal:{principal.id}")
        return principal

    def _known_active(self, subject: str) -> bool | None:
        """The remembered sign-in state of a user; True for a subject that is no user."""
        try:
            user_id = UUID(subject)
        except ValueError:
            return True
        with self._lock:
            cached = self._active.get(user_id)
        if cached is not None and cached[0] > self._monotonic():
            return cached[1]
        return None

    def _identify(self, authorization: str | None, api_key: str | None) -> Principal:
        if api_key:
            return self._api_key(api_key.strip())
        if not authorization:
            raise _unauthorised("authentication required")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthorised("use a Bearer token")
        if token.startswith("crmk_"):
            return self._api_key(token)
        principal = self.tokens.verify(token)
        if not self._is_active(principal.id):
            raise _unauthorised("the user is deactivated")
        return principal

    def _api_key(self, presented: str) -> Principal:
        checked = check_api_key(self.app, presented, self._now())
        if checked.principal is None:
            raise HTTPException(401, checked.problem or "bad API key",
                                headers={"WWW-Authenticate": 'Bearer realm="crm", ApiKey'})
        key_id = UUID(checked.principal.id)
        now = self._monotonic()
        with self._lock:
            due = now - self._touched.get(key_id, float("-inf")) >= self._touch_seconds
            if due:
                self._touched[key_id] = now
        if due:  # at most one write per key per interval and process
            self.app.recorder.touch_api_key(key_id, self._now())  # type: ignore[attr-defined]
        return checked.principal

    def _is_active(self, subject: str) -> bool:
        try:
            user_id = UUID(subject)
        except ValueError:
            return True  # not a user: a token made for a script or test
        now = self._monotonic()
        with self._lock:
            cached = self._active.get(user_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        credential = self.app.recorder.credential(user_id)  # type: ignore[attr-defined]
        active = credential is None or bool(credential.active)
        with self._lock:
            if len(self._active) > 100_000:
                self._active.clear()
            self._active[user_id] = (now + self._cache_seconds, active)
        return active

    def forget(self, user_id: UUID) -> None:
        """Re-read this user's sign-in state on their next request."""
        with self._lock:
            self._active.pop(user_id, None)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def authenticate(request: Request, tokens: TokenIssuer, authorization: str | None,
                 api_key: str | None) -> Principal:
    """The request's principal: through the app's ``Authenticator`` when it has one, else
    by the bearer JWT alone."""
    authenticator: Authenticator | None = getattr(request.app.state, "authenticator", None)
    if authenticator is not None:
        return authenticator.authenticate(request, authorization, api_key)
    if not authorization:
        raise _unauthorised("authentication required")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorised("use a Bearer token")
    return tokens.verify(token.strip())


def _unauthorised(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": 'Bearer realm="crm"'})


def require_scope(principal: Principal, scope: str) -> None:
    if scope not in WRITE_SCOPES.get(principal.role, frozenset()):
        raise HTTPException(403, f"the {principal.role} role may not do this ({scope})")
