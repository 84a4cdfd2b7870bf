"""The limit of the HTTP stack for the load test: a bare FastAPI app with one async route,
served by uvicorn exactly as ``crm serve`` serves the CRM (same loop, HTTP parser, no access
log, the same number of workers): ``python -m bench.bare_app PORT WORKERS``."""

from __future__ import annotations

import sys

from fastapi import FastAPI

app = FastAPI()


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


def main(argv: list[str]) -> None:
    import uvicorn

    from crm.server import server_options
    from crm.settings import Settings

    port, workers = int(argv[0]), int(argv[1])
    uvicorn.run("bench.bare_app:app", host="127.0.0.1", port=port, workers=workers,
                log_config=None, access_log=False, **server_options(Settings()))


if __name__ == "__main__":
    main(sys.argv[1:])
