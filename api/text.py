"""Accepted text in the query string and the path: checked once for every route.

Bodies are checked by their models (``commands.base.CheckedInput``); the query string
and the path are not models, so every route of the app depends on ``check_parameters``
(``FastAPI(dependencies=...)``), which runs before the route's own parameters are read:
a name or value holding a character no text may hold is a 422 problem naming the
parameter, whatever the route does with it (a list filter, a sort, a cursor, a path id).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from fastapi import Request
from fastapi.exceptions import RequestValidationError

from commands.base import text_problem

#: The query string as sent can carry a refused character only percent-encoded or raw
#: below 0x20 (``+`` is a space); without either, no parsing is needed.
_MAY_HOLD = re.compile(rb"%|[\x00-\x1f]")


def _refused(source: str, name: str, problem: str) -> RequestValidationError:
    return RequestValidationError([{"loc": (source, name), "msg": problem, "type": "text"}])


async def check_parameters(request: Request) -> None:
    """422 naming the first query or path parameter that is not accepted text."""
    query = request.scope.get("query_string", b"")
    if query and _MAY_HOLD.search(query):
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            problem = text_problem(name)
            if problem is not None:
                raise _refused("query", name.encode("unicode_escape").decode("ascii"),
                               f"the name {problem}")
            problem = text_problem(value)
            if problem is not None:
                raise _refused("query", name, problem)
    for name, value in request.path_params.items():
        if isinstance(value, str):
            problem = text_problem(value)
            if problem is not None:
                raise _refused("path", name, problem)
