"""Password hashes (argon2id): made and checked here, stored beside the log, never in it."""

from __future__ import annotations

from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_LENGTH = 12
MAX_LENGTH = 1024


@lru_cache(maxsize=1)
def _hasher() -> PasswordHasher:
    return PasswordHasher()  # argon2id with the library's RFC 9106 defaults


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return _hasher().hash("not anybody's password: unknown users cost as much as known ones")


def hash_password(password: str) -> str:
    return _hasher().hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True if the password matches; with no hash (no such user) it still spends the
    time of one verification, so a wrong name answers as slowly as a wrong password."""
    try:
        ok = _hasher().verify(password_hash or _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return False
    return ok and password_hash is not None


def needs_rehash(password_hash: str) -> bool:
    return _hasher().check_needs_rehash(password_hash)
