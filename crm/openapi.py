"""The OpenAPI document of the HTTP API, written without a server or a database.

``python -m crm.openapi [PATH]`` builds the app over no services (building the document
reads only the routes) and writes ``/openapi.json`` as the server would give it, keys
sorted, to PATH (default ``web/openapi.json``, from which the web UI's build generates
its TypeScript types; ``scripts/setup`` runs it before the build). It writes the file
only when its content changes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from crm.app import DEFAULT_CALLER_RATE, DEFAULT_LOGIN_RATE, create_app
from api.auth import Authenticator
from api.limits import RateLimits
from api.services import Services

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "web" / "openapi.json"


def document() -> dict[str, Any]:
    """The app's OpenAPI document (the routes only: no store, no read side is touched)."""
    services = Services(app=None, commands=None, tokens=None)  # type: ignore[arg-type]
    authenticator = Authenticator(None, None, RateLimits(DEFAULT_CALLER_RATE, DEFAULT_LOGIN_RATE))  # type: ignore[arg-type]
    return create_app(services, authenticator=authenticator).openapi()


def text() -> str:
    """The document as written to the file: indented, keys sorted, a final newline."""
    return json.dumps(document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(path: Path = DEFAULT_PATH) -> bool:
    """Write the document to ``path``; True when the file changed."""
    content = text()
    if path.is_file() and path.read_text(encoding="utf-8") == content:
        return False
    path.write_text(content, encoding="utf-8")
    return True


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PATH
    print(f"{target}: {'written' if write(target) else 'unchanged'}")
