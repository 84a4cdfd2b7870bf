"""JSON views of Python values (read-model rows, aggregate states) and masking."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from starlette.responses import JSONResponse as StarletteJSONResponse

from replay.timeline import PLAIN, jsonable

__all__ = ["MASK", "JSONResponse", "jsonable", "mask_value", "masked_row"]

#: What a personal field shows to a role that may not read personal data.
MASK = "***"
#: Keys of a masked item (a contact point, a comment) that describe it rather than the
#: person, and stay as they are: the item keeps its kind, id, author and time.
KEPT_KEYS = frozenset({"contact_id", "comment_id", "kind", "label", "primary", "visibility",
                       "author_id", "at", "id"})


def mask_value(value: Any) -> Any:
    """A personal value masked without changing its JSON type: text becomes ``MASK``, a
    list a list of its items masked, an object the same keys with their values masked
    (``KEPT_KEYS`` kept); numbers, booleans and nulls stay."""
    if isinstance(value, str):
        return MASK
    if isinstance(value, list | tuple):
        return [mask_value(v) for v in value]
    if isinstance(value, dict):
        return {k: v if k in KEPT_KEYS else mask_value(v) for k, v in value.items()}
    return value


def masked_row(row: Mapping[str, Any], *, personal: Iterable[str], hidden: Iterable[str] = (),
               mask: bool, as_read: bool = False) -> dict[str, Any]:
    """A read-model row as JSON: ``hidden`` columns dropped, ``personal`` ones masked
    (when ``mask``) unless they are empty. ``as_read``: the values left as they are, for
    ``JSONResponse`` to write (the same JSON, without a copy made first)."""
    drop = set(hidden)
    if as_read:
        out = {k: v for k, v in row.items() if k not in drop and k[:1] != "_"}
    else:
        out = {k: v if type(v) in PLAIN else jsonable(v)
               for k, v in row.items() if k not in drop and k[:1] != "_"}
    if mask:
        for name in personal:
            if out.get(name) is not None:
                out[name] = mask_value(out[name])
    return out


def _default(value: Any) -> Any:
    converted = jsonable(value)
    if converted is value:
        raise TypeError(f"{type(value).__name__} is not JSON serializable")
    return converted


class JSONResponse(StarletteJSONResponse):
    """Starlette's JSONResponse, rendered by orjson: the same bytes for the same content
    (compact, UTF-8, ids and times as text), in a tenth of the time; values orjson does not
    know (amounts) are made JSON by ``jsonable``."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=_default, option=orjson.OPT_NON_STR_KEYS)
