"""JSON views of Python values (read-model rows, aggregate states) and masking."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from replay.timeline import jsonable

__all__ = ["MASK", "jsonable", "masked_row"]

#: What a personal field shows to a role that may not read personal data.
MASK = "***"


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
