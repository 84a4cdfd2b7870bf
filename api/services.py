"""Command routes and record routes of the HTTP API (/api/v1).

Every command route: authenticate, check the role may do it, build the command from the
body (unknown fields refused), run it with the caller's If-Match and Idempotency-Key,
answer with the record's id, new version (also as ETag) and log position.
"""

from dataclasses import dataclass
from typing import Annotated, Any

import structlog
from fastapi import Depends, Header, Request
from fastapi.concurrency import run_in_threadpool

from commands.application import CommandService, CrmApplication, Principal
from feeds.kafka import KafkaFeed
from analytics.store import AnalyticsProjection
from projections.service import ReadSide
from api.auth import Authenticator, TokenIssuer, authenticate

@dataclass
class Services:
    """What the routes need, built once by the composition root."""

    app: CrmApplication
    commands: CommandService
    tokens: TokenIssuer
    read: ReadSide | None = None
    #: the Kafka publisher, when publishing is on (for /metrics)
    kafka: KafkaFeed | None = None
    audit_key: Any = None  # the Ed25519 key that signs audit exports
    analytics: AnalyticsProjection | None = None
    survey_key: bytes | None = None  # signs satisfaction survey links
    erasure: Any = None  # runs erasures (writeapi.erasure.Erasures)
    #: the automation follows the log (its position, lag and parked events in /ready, /metrics)
    automation: bool = False


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


async def principal(
    request: Request,
    authorization: Annotated[str | None, Header(description="Bearer <JWT> or Bearer crmk_... (API key)")] = None,
    x_api_key: Annotated[str | None, Header(description="An API key, crmk_... (systems)")] = None,
) -> Principal:
    # On the event loop when no database is asked (most requests: a thread hand-off
    # less); an API key or a user's sign-in state not yet remembered: in the threadpool.
    authenticator: Authenticator | None = getattr(request.app.state, "authenticator", None)
    p = authenticator.authenticate_known(request, authorization, x_api_key) if authenticator else None
    if p is None:
        p = await run_in_threadpool(authenticate, request, services(request).tokens, authorization, x_api_key)
    structlog.contextvars.bind_contextvars(actor_id=p.id, actor_role=p.role)
    return p


Caller = Annotated[Principal, Depends(principal)]
