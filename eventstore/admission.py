"""The rules an append must pass before anything of it is stored, one by one.

Both recorders use them: the PostgreSQL one on what it read under the log's lock for a
whole group of appends, the in-memory one on its own dictionaries. So both refuse the
same appends, in the same order of rules, with the same errors:

1. versions: no event's (record, version) is stored already, nor claimed twice;
2. follow-on: each event's version follows one stored (or claimed before it in the
   append), so a record held in memory while its log went back cannot leave a gap;
3. keys: no sealed customer's personal-data key was destroyed, nor stored by another
   writer since this append made one;
4. idempotency: the request's Idempotency-Key has no answer yet;
5. e-mail reservations: releases first, then every reserved address is free or the
   same customer's.

An admitted append's claims count as stored for the appends after it in its group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from uuid import UUID

from eventsourcing.persistence import IntegrityError

from events.keys import SubjectKeyDestroyed

if TYPE_CHECKING:
    from eventstore.recorder import WriteExtras

#: (record id, version) of one event
Claim = tuple[UUID, int]


class EmailTaken(Exception):
    """An e-mail reservation collided with another customer's."""

    def __init__(self, email_hmac: bytes):
        super().__init__("e-mail already registered")
        self.email_hmac = email_hmac


class IdempotencyKeyTaken(Exception):
    """Another request with the same Idempotency-Key committed first."""


@dataclass
class LogState:
    """What the rules read, as the appends admitted so far leave it."""

    #: (record id, version) stored, of those the appends claim (and their predecessors)
    stored_versions: set[Claim]
    #: each concerned e-mail address's holder (None: free)
    owner: dict[bytes, UUID | None]
    #: (principal, Idempotency-Key) answered already
    used_keys: set[tuple[str, str]]
    #: sealed subjects with a stored key: whether it was destroyed (absent: no key)
    key_destroyed: dict[UUID, bool]


def version_refusal(claims: Sequence[Claim], state: LogState) -> Exception | None:
    """Rule 1: a version stored already, or claimed twice by the append."""
    if any(c in state.stored_versions for c in claims) or len(set(claims)) < len(claims):
        first = claims[0]
        return IntegrityError(f"version {first[1]} of {first[0]} was stored by another writer")
    return None


def follow_on_refusal(claims: Sequence[Claim], state: LogState) -> Exception | None:
    """Rule 2: a version whose predecessor is neither stored nor claimed by the append."""
    own = set(claims)
    for originator_id, version in claims:
        before = (originator_id, version - 1)
        if version > 1 and before not in state.stored_versions and before not in own:
            return IntegrityError(f"version {version - 1} of {originator_id} is not stored")
    return None


def key_refusal(extras: WriteExtras, new_keys: dict[UUID, bytes], state: LogState) -> Exception | None:
    """Rule 3: a sealed subject's key destroyed, or stored since this append made one."""
    for subject in sorted(extras.sealed_subjects):
        destroyed = state.key_destroyed.get(subject)
        if destroyed:
            return SubjectKeyDestroyed(subject)
        if destroyed is not None and subject in new_keys:
            return IntegrityError(f"a key for {subject} exists already")
    return None


def idempotency_refusal(extras: WriteExtras, state: LogState) -> Exception | None:
    """Rule 4: the Idempotency-Key answered already."""
    record = extras.idempotency
    if record is not None and (record.principal, record.key) in state.used_keys:
        return IdempotencyKeyTaken()
    return None


def reservations_after(extras: WriteExtras, owner: dict[bytes, UUID | None]
                       ) -> tuple[dict[bytes, UUID | None], Exception | None]:
    """Rule 5: the addresses' holders once the append's releases and reservations are
    applied (in that order), or the refusal of the first address another customer holds."""
    after = dict(owner)
    for email_hmac, customer_id in extras.release_emails:
        if after.get(email_hmac) == customer_id:
            after[email_hmac] = None
    for email_hmac, customer_id in extras.reserve_emails:
        holder = after.get(email_hmac)
        if holder is not None and holder != customer_id:
            return after, EmailTaken(email_hmac)
        after[email_hmac] = customer_id
    return after, None


def _extras_refusal(extras: WriteExtras, new_keys: dict[UUID, bytes],
                    state: LogState) -> tuple[dict[bytes, UUID | None], Exception | None]:
    """Rules 3 to 5, in order."""
    error = key_refusal(extras, new_keys, state)
    if error is None:
        error = idempotency_refusal(extras, state)
    if error is not None:
        return state.owner, error
    return reservations_after(extras, state.owner)


def admit(claims: Sequence[Claim], extras: WriteExtras | None, new_keys: dict[UUID, bytes],
          state: LogState) -> Exception | None:
    """None if the append passes every rule after the ones admitted before it (what it
    claims is then marked in ``state`` for those after it); else the first refusal."""
    for rule in (version_refusal, follow_on_refusal):
        if (error := rule(claims, state)) is not None:
            return error
    if extras is not None:
        after, error = _extras_refusal(extras, new_keys, state)
        if error is not None:
            return error
        state.owner.update(after)
        if extras.idempotency is not None:
            state.used_keys.add((extras.idempotency.principal, extras.idempotency.key))
        for subject in new_keys:
            state.key_destroyed[subject] = False
    state.stored_versions.update(claims)
    return None
