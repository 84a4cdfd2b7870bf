"""JSON views of Python values (read-model rows, aggregate states) and masking."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

#: What a personal field shows to a role that may not read personal data.
MASK = "***"


def jsonable(value: Any) -> Any:
    if isinstance(value, UUID | Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(v) for v in value]
    return value


def masked_row(row: dict[str, Any], *, personal: Iterable[str], hidden: Iterable[str] = (),
               mask: bool) -> dict[str, Any]:
    """A read-model row as JSON: ``hidden`` columns dropped, ``personal`` ones masked
    (when ``mask``) unless they are empty."""
    drop = set(hidden)
    out = {k: jsonable(v) for k, v in row.items() if k not in drop and not k.startswith("_")}
    if mask:
        for name in personal:
            if out.get(name) is not None:
                out[name] = MASK
    return out
