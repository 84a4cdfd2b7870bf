"""Authentication (bearer JWT) and the coarse role permissions of the command API."""

from __future__ import annotations

import ipaddress
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import jwt
from fastapi import HTTPException, Request

from commands.application import CrmApplication, Principal
from commands.base import text_problem
from commands.identity import ROLES, check_api_key
from api.limits import RateLimits

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
    #: the clock skew allowed between issuer and API: on exp, and on iat, nbf and
    #: auth_time in the future
    leeway_seconds: int = 30
    #: the longest a token may be valid for (exp - iat); longer ones are refused even if signed
    max_lifetime_seconds: int = 24 * 3600

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
        # Tokens already verified: the principal and the token's generation until the
        # token expires (as jwt.decode would say: exp + leeway). A caller sends the same
        # token for many requests; its signature and claims need checking once (~60 µs
        # each time, 10 % of a read).
        self._verified: dict[str, tuple[Principal, int, float]] = {}

    def issue(self, user_id: str, role: str, *, ttl: timedelta = timedelta(hours=8),
              now: datetime | None = None, team_id: str | None = None, auth_time: int | None = None,
              generation: int = 0) -> str:
        """A signed token; ``auth_time`` is when the user signed in (kept across refreshes;
        the token's own issue time when not given); ``generation`` the user's token
        generation (``Credential.generation``) when it was issued."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        if ttl.total_seconds() > self.settings.max_lifetime_seconds:
            raise ValueError(f"a token lives at most {self.settings.max_lifetime_seconds / 3600:g} hours")
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
        if generation:
            claims["gen"] = generation
        if team_id is not None:
            claims["team"] = team_id
        return jwt.encode(claims, self.settings.signing_key(), algorithm=self.settings.algorithm)

    def verify(self, token: str) -> Principal:
        return self.verified(token)[0]

    def verified(self, token: str) -> tuple[Principal, int]:
        """The token's principal and generation (401 for a token that is not good)."""
        known = self._verified.get(token)
        if known is not None and time.time() < known[2]:
            return known[0], known[1]
        claims = self.claims(token)
        principal = self.principal(claims)
        generation = claims.get("gen", 0)
        if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
            raise _unauthorised("the token's generation is not a count")
        # Remembered until the token expires (as jwt.decode would say: exp + leeway); a
        # token with a not-before time is checked every time, never remembered.
        expires = (float("-inf") if "nbf" in claims
                   else float(claims["exp"]) + self.settings.leeway_seconds)
        if len(self._verified) >= MAX_VERIFIED_TOKENS:
            self._verified.clear()
        self._verified[token] = (principal, generation, expires)
        return principal, generation

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
                options={"require": ["exp", "iss", "aud", "sub", "iat"]},
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorised("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise _unauthorised("the token is not valid yet (issued in the future)") from None
        except jwt.InvalidTokenError as e:
            raise _unauthorised(f"invalid token: {e}") from None
        # PyJWT checked that exp and iat are numbers and iat is not in the future.
        if float(claims["exp"]) - float(claims["iat"]) > self.settings.max_lifetime_seconds:
            raise _unauthorised(f"the token lives longer than {self.settings.max_lifetime_seconds} s "
                                "(exp - iat); such tokens are refused")
        auth_time = claims.get("auth_time")
        if auth_time is not None:
            if not isinstance(auth_time, int | float) or isinstance(auth_time, bool):
                raise _unauthorised("the token's auth_time is not a time")
            if auth_time > time.time() + self.settings.leeway_seconds:
                raise _unauthorised("the token's auth_time is in the future")
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

    A user's token stops working when the user is deactivated, and when their role,
    team or password changes: each request checks the user's sign-in state
    (``crm_credentials.active`` and ``generation``, written with the change's event;
    a token of an earlier generation is refused), remembered per process for
    ``active_cache_seconds`` and forgotten at once by this process's own changes.
    Subjects that are no user (tokens made by `crm token` for scripts and tests) are
    trusted on their signature alone.

    The client address (the key of unauthenticated callers' and sign-in attempts' rate
    limits) is the connection's peer; ``X-Forwarded-For`` is believed only when the peer
    is one of ``trusted_proxies``.
    """

    def __init__(self, app: CrmApplication, tokens: TokenIssuer, limits: RateLimits, *,
                 active_cache_seconds: float = 2.0, api_key_touch_seconds: float = 60.0,
                 access_token_ttl: timedelta = timedelta(minutes=15),
                 max_session: timedelta = timedelta(hours=12),
                 trusted_proxies: Iterable[str] = (),
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
        self.trusted_proxies = TrustedProxies(trusted_proxies)
        self._lock = threading.Lock()
        #: user -> (remembered until, active, generation)
        self._active: dict[UUID, tuple[float, bool, int]] = {}
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
            principal, generation = self.tokens.verified(token)
            state = self._known_state(principal.id)
            if state is None:
                return None
            _check_state(state, generation)
        except HTTPException:
            self.limits.check_caller(f"address:{client_address(request)}")
            raise
        self.limits.check_caller(f"principal:{principal.id}")
        return principal

    def _known_state(self, subject: str) -> tuple[bool, int | None] | None:
        """The remembered sign-in state of a user (active, generation); None when not
        remembered; (True, None) for a subject that is no user."""
        try:
            user_id = UUID(subject)
        except ValueError:
            return True, None
        with self._lock:
            cached = self._active.get(user_id)
        if cached is not None and cached[0] > self._monotonic():
            return cached[1], cached[2]
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
        principal, generation = self.tokens.verified(token)
        _check_state(self._state(principal.id), generation)
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

    def _state(self, subject: str) -> tuple[bool, int | None]:
        """(active, generation) of the subject's user; (True, None) for no user."""
        try:
            user_id = UUID(subject)
        except ValueError:
            return True, None  # not a user: a token made for a script or test
        now = self._monotonic()
        with self._lock:
            cached = self._active.get(user_id)
        if cached is not None and cached[0] > now:
            return cached[1], cached[2]
        credential = self.app.recorder.credential(user_id)  # type: ignore[attr-defined]
        if credential is None:
            return True, None  # a subject that looks like a user id but names none
        active, generation = bool(credential.active), int(credential.generation)
        with self._lock:
            if len(self._active) > 100_000:
                self._active.clear()
            self._active[user_id] = (now + self._cache_seconds, active, generation)
        return active, generation

    def generation(self, user_id: UUID) -> int:
        """The user's current token generation, read now (for the token to issue them)."""
        credential = self.app.recorder.credential(user_id)  # type: ignore[attr-defined]
        return int(credential.generation) if credential is not None else 0

    def forget(self, user_id: UUID) -> None:
        """Re-read this user's sign-in state on their next request."""
        with self._lock:
            self._active.pop(user_id, None)

    def client_address(self, request: Request) -> str:
        return self.trusted_proxies.client_address(request)


def _check_state(state: tuple[bool, int | None], generation: int) -> None:
    active, current = state
    if not active:
        raise _unauthorised("the user is deactivated")
    if current is not None and generation != current:
        raise _unauthorised("the token was issued before the user's role, team or password changed; "
                            "sign in again")


class TrustedProxies:
    """Which peers' ``X-Forwarded-For`` is believed: addresses and networks (CIDR)."""

    def __init__(self, proxies: Iterable[str] = ()):
        self.networks = tuple(ipaddress.ip_network(p.strip(), strict=False) for p in proxies if p.strip())

    def trusts(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in n for n in self.networks)

    def client_address(self, request: Request) -> str:
        """The peer; behind trusted proxies, the nearest address in ``X-Forwarded-For``
        that is not one of them (read from the right: the left is whatever the client
        wrote)."""
        peer = request.client.host if request.client else "unknown"
        if not self.networks or not self.trusts(peer):
            return peer
        forwarded = [a.strip() for v in request.headers.getlist("x-forwarded-for") for a in v.split(",")]
        address = peer
        for hop in reversed(forwarded):
            try:
                hop = str(ipaddress.ip_address(hop))
            except ValueError:
                return address  # not an address: nothing further left is believed
            address = hop
            if not self.trusts(hop):
                break
        return address


def client_address(request: Request) -> str:
    """The caller's address: through the app's ``Authenticator`` (which knows the trusted
    proxies) when it has one, else the connection's peer."""
    authenticator: Authenticator | None = getattr(request.app.state, "authenticator", None)
    if authenticator is not None:
        return authenticator.client_address(request)
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
