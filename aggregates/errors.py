"""Domain errors: a refused decision, naming the field and the reason."""

from __future__ import annotations


class DomainError(Exception):
    """A command was refused by a rule. Nothing is stored."""

    status = 422
    code = "rule-violated"

    def __init__(self, detail: str, *, field: str | None = None, **extra: object):
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.extra = extra


class InvalidValue(DomainError):
    """A value the rules do not accept (422)."""

    code = "invalid-value"


class InvalidTransition(DomainError):
    """The record's current state does not allow this change (409)."""

    status = 409
    code = "invalid-transition"


class Duplicate(DomainError):
    """The thing already exists (409), e.g. an e-mail registered to another customer."""

    status = 409
    code = "duplicate"


class NotFound(DomainError):
    """No such record (404)."""

    status = 404
    code = "not-found"


def no_record(type_name: str, record_id: object) -> NotFound:
    """The one answer for a record that does not exist, is of another type, or is out of
    the caller's reach: the same words for all three, so none tells which."""
    return NotFound(f"no {record_label(type_name)} {record_id}")


def record_label(type_name: str) -> str:
    """A record type in words: ``service_request`` -> ``service request``."""
    return type_name.replace("_", " ")


class Forbidden(DomainError):
    """The caller may not do this (403)."""

    status = 403
    code = "forbidden"


class PersonalDataErased(DomainError):
    """The customer's personal data was erased; the record is closed to changes (409)."""

    status = 409
    code = "personal-data-erased"
