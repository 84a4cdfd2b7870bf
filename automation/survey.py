"""Satisfaction survey links: a signed, expiring token naming one service request.

``<payload>.<signature>``, both base64url: the payload is ``{"r": request id, "exp":
unix seconds}``, the signature its HMAC-SHA256 under the survey key. The token is a
pure function of the request and its resolution time, so a replay makes the same one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID


class InvalidToken(ValueError):
    """Not a token this system signed."""


class ExpiredToken(ValueError):
    """A genuine token past its expiry."""


@dataclass(frozen=True)
class SurveyToken:
    request_id: UUID
    expires_at: datetime


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(key: bytes, request_id: UUID, expires_at: datetime) -> str:
    payload = json.dumps({"r": str(request_id), "exp": int(expires_at.timestamp())},
                         separators=(",", ":"), sort_keys=True).encode()
    return f"{_b64(payload)}.{_b64(hmac.new(key, payload, hashlib.sha256).digest())}"


def verify(key: bytes, token: str, now: datetime) -> SurveyToken:
    """The token's request and expiry; ``InvalidToken`` if forged or malformed,
    ``ExpiredToken`` if genuine but expired."""
    try:
        head, _, sig = token.partition(".")
        payload = _unb64(head)
        given = _unb64(sig)
    except ValueError:
        raise InvalidToken("the survey link is not valid") from None
    if not hmac.compare_digest(given, hmac.new(key, payload, hashlib.sha256).digest()):
        raise InvalidToken("the survey link is not valid")
    try:
        doc = json.loads(payload)
        found = SurveyToken(UUID(doc["r"]), datetime.fromtimestamp(int(doc["exp"]), UTC))
    except (ValueError, KeyError, TypeError):
        raise InvalidToken("the survey link is not valid") from None
    if now >= found.expires_at:
        raise ExpiredToken("the survey link has expired")
    return found
