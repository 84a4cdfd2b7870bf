"""Routes of the automation: the caller's notifications, and the satisfaction survey
(no login: the signed link is the credential)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from commands import AGGREGATE_TYPES
from commands import service_request as cs
from commands.base import CheckedInput
from commands.application import Principal, Request as CommandRequest
from automation import survey
from automation.runner import notifications_for
from api.problems import Problem
from api.services import Caller, services

#: The actor of ratings given through a survey link.
SURVEY_PRINCIPAL = Principal(id="survey", role="customer")
Token = Annotated[str, Path(min_length=10, max_length=400, description="The survey link's token.")]


class NotificationOut(BaseModel):
    id: str
    kind: str = Field(description="task_due_soon | task_overdue | sla_breach | survey_invitation")
    message: str
    related_type: str | None
    related_id: UUID | None
    link: str | None
    created_at: datetime


class NotificationPage(BaseModel):
    items: list[NotificationOut]


class SurveyOut(BaseModel):
    request_id: UUID
    expires_at: datetime
    answered: bool
    rating: int | None


class SurveyAnswer(CheckedInput):
    model_config = ConfigDict(extra="forbid")
    rating: int = Field(ge=1, le=5)
    comment: str | None = Field(default=None, max_length=5_000)


def _notifications(request: Request, caller: Caller,
                   limit: Annotated[int, Query(ge=1, le=500)] = 100) -> NotificationPage:
    read = services(request).read
    if read is None:
        raise Problem(503, "the read side is not running", code="read-side-unavailable")
    with read.pool.connection() as conn:
        rows = notifications_for(conn, caller.id, limit)
    return NotificationPage(items=[NotificationOut(**r) for r in rows])


def _verified(request: Request, token: str) -> tuple[survey.SurveyToken, Any]:
    s = services(request)
    if s.survey_key is None:
        raise Problem(404, "surveys are not enabled", code="survey-disabled", field="token")
    try:
        found = survey.verify(s.survey_key, token, s.commands.clock.now())
    except survey.ExpiredToken as e:
        raise Problem(410, str(e), code="survey-link-expired", field="token") from None
    except survey.InvalidToken as e:
        raise Problem(403, str(e), code="survey-link-invalid", field="token") from None
    sr = s.app.load(AGGREGATE_TYPES["service_request"], found.request_id)
    return found, sr


def _survey(request: Request, token: Token) -> SurveyOut:
    found, sr = _verified(request, token)
    return SurveyOut(request_id=found.request_id, expires_at=found.expires_at,
                     answered=sr.rating is not None, rating=sr.rating)


def _answer(request: Request, token: Token, body: SurveyAnswer) -> SurveyOut:
    found, sr = _verified(request, token)
    if sr.rating is not None:
        raise Problem(409, "this survey was already answered", code="survey-answered", field="token")
    s = services(request)
    s.commands.execute(
        cs.RateServiceRequest(rating=body.rating, comment=body.comment, reason="satisfaction survey"),
        CommandRequest(SURVEY_PRINCIPAL, request.state.correlation_id, target=found.request_id, idempotency_key=f"survey:{found.request_id}"),
    )
    return SurveyOut(request_id=found.request_id, expires_at=found.expires_at, answered=True,
                     rating=body.rating)


def build_automation_router() -> APIRouter:
    r = APIRouter(prefix="/api/v1", tags=["automation"])
    r.add_api_route("/notifications", _notifications, methods=["GET"], response_model=NotificationPage,
                    operation_id="list_my_notifications",
                    summary="The caller's notifications (reminders, SLA breaches, survey links), newest first")
    r.add_api_route("/survey/{token}", _survey, methods=["GET"], response_model=SurveyOut,
                    operation_id="get_survey", summary="A satisfaction survey (no login: the link is signed)")
    r.add_api_route("/survey/{token}", _answer, methods=["POST"], response_model=SurveyOut,
                    operation_id="answer_survey", summary="Answer a satisfaction survey, once")
    return r
