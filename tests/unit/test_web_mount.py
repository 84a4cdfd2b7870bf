"""The web UI's mount: files of the build, index.html for client routes, the API's own
answers untouched, and a loud 503 page when the UI is not built."""

from __future__ import annotations

from pathlib import Path


from fastapi import FastAPI

from tests.asgi_client import Client
from api import problems
from api.web import mount_web_ui


def _app(directory: Path) -> Client:
    app = FastAPI()
    problems.install(app)

    @app.get("/api/v1/things")
    def things() -> dict[str, list[str]]:
        return {"items": []}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    mount_web_ui(app, directory)
    return Client(app)


def _build(tmp_path: Path) -> Path:
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><div id=app></div>")
    (dist / "assets" / "index-abc.js").write_text("console.log(1)")
    return dist


def test_files_and_client_routes(tmp_path: Path) -> None:
    client = _app(_build(tmp_path))
    for path in ("/", "/customers", "/customers/5d6e0c1e-0000-4000-8000-000000000000", "/audit/x?y=1"):
        r = client.get(path)
        assert r.status_code == 200 and "<div id=app>" in r.text, path
        assert r.headers["cache-control"] == "no-cache"
    r = client.get("/assets/index-abc.js")
    assert r.status_code == 200 and r.text == "console.log(1)"
    assert "immutable" in r.headers["cache-control"]
    assert client.get("/assets/missing.js").status_code == 404
    r = client.get("/no/such/path")  # not a route of the app either
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")


def test_the_api_answers_as_before(tmp_path: Path) -> None:
    client = _app(_build(tmp_path))
    assert client.get("/api/v1/things").json() == {"items": []}
    assert client.get("/health").json() == {"status": "ok"}
    r = client.get("/api/v1/nothing-here")
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
    r = client.post("/api/v1/things")
    assert r.status_code == 405 and r.headers["content-type"].startswith("application/problem+json")
    assert client.get("/api").status_code == 404


def test_a_missing_build_is_a_loud_503_page(tmp_path: Path) -> None:
    client = _app(tmp_path / "not-built")
    r = client.get("/customers")
    assert r.status_code == 503
    assert "The web UI is not built" in r.text and "scripts/setup" in r.text
    assert client.get("/api/v1/things").status_code == 200
