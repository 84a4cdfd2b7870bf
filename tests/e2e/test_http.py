"""The real app under uvicorn, spoken to over HTTP: auth, ETags, idempotency,
problem+json errors, event metadata, masking and the records' life cycles."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import uvicorn

from crm.server import server_options
from crm.settings import Settings

from api.auth import JwtSettings, TokenIssuer
from tests.conftest import JWT_SECRET, MASTER_KEY

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

PROBLEM = "application/problem+json"
C = "/api/v1/customers"
O = "/api/v1/opportunities"  # noqa: E741
S = "/api/v1/service-requests"
T = "/api/v1/tasks"
I = "/api/v1/interactions"  # noqa: E741


def _wait_for_health(base_url: str, timeout: float = 15.0, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{base_url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.02)
    raise AssertionError(f"{base_url}/health did not answer within {timeout}s: {last!r}")


@dataclass
class Api:
    """An HTTP client of the running app, and a way to make tokens for it."""

    client: httpx.Client
    tokens: TokenIssuer

    def auth(self, user: str = "rep-1", role: str = "sales_rep", **headers: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens.issue(user, role)}", **headers}

    def post(self, path: str, body: Any = None, *, user: str = "rep-1", role: str = "sales_rep",
             **headers: str) -> httpx.Response:
        return self.client.post(path, json=body, headers=self.auth(user, role, **headers))

    def patch(self, path: str, body: Any, *, user: str = "rep-1", role: str = "sales_rep",
              **headers: str) -> httpx.Response:
        return self.client.patch(path, json=body, headers=self.auth(user, role, **headers))

    def get(self, path: str, *, user: str = "rep-1", role: str = "sales_rep", **headers: str) -> httpx.Response:
        return self.client.get(path, headers=self.auth(user, role, **headers))

    def events(self, path: str, *, role: str = "sales_rep", user: str = "rep-1") -> list[dict[str, Any]]:
        r = self.get(f"{path}/events", role=role, user=user)
        assert r.status_code == 200, r.text
        return r.json()["items"]  # type: ignore[no-any-return]

    def register(self, name: str = "Ada Lovelace", *, user: str = "rep-1", role: str = "sales_rep",
                 **body: Any) -> httpx.Response:
        r = self.post(C, {"kind": "person", "name": name, **body}, user=user, role=role)
        assert r.status_code == 201, r.text
        return r


def if_match(version: int) -> dict[str, str]:
    return {"If-Match": f'"{version}"'}


def assert_problem(r: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    assert body["type"].startswith("https://") and body["title"] and body["detail"]
    if field is not None:
        assert body.get("field") == field, body
    return body


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn on a free port in a background thread; its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False,
        lifespan="off", ws="none", **server_options(Settings()),  # as `crm serve` runs it
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_health(base_url)
        yield base_url
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


@contextmanager
def served(system: Any) -> Iterator[Api]:
    """The app of ``system`` served, with a client for it."""
    with serving(system.http_app()) as base_url, httpx.Client(base_url=base_url, timeout=10.0) as client:
        yield Api(client, system.tokens)


@pytest.fixture
def api(system: Any) -> Iterator[Api]:
    with served(system) as api:
        yield api


def event_log_position(api: Api) -> int:
    return int(api.client.get("/ready").json()["event_log_position"])


# -- authentication and permissions ------------------------------------------------
def test_no_token_is_401_problem(api: Api) -> None:
    r = api.client.get(f"{C}/{uuid.uuid4()}")
    assert_problem(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = api.client.post(C, json={"kind": "person", "name": "X"})
    assert_problem(r, 401)
    assert event_log_position(api) == 0


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"sub": "rep-1", "role": "sales_rep", "iss": "crm-core", "aud": "crm-api",
              "iat": now, "exp": now + 600}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


BAD_TOKENS = {
    "wrong-secret": lambda: jwt.encode(_claims(), "not-the-secret-" + "y" * 32, algorithm="HS256"),
    "expired": lambda: jwt.encode(_claims(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600),
                                  JWT_SECRET, algorithm="HS256"),
    "wrong-audience": lambda: jwt.encode(_claims(aud="another-api"), JWT_SECRET, algorithm="HS256"),
    "wrong-issuer": lambda: jwt.encode(_claims(iss="someone-else"), JWT_SECRET, algorithm="HS256"),
    "alg-none": lambda: jwt.encode(_claims(), None, algorithm="none"),
    "alg-none-signed-looking": lambda: jwt.encode(_claims(), None, algorithm="none") + "c2ln",
    "unknown-role": lambda: jwt.encode(_claims(role="emperor"), JWT_SECRET, algorithm="HS256"),
    "no-subject": lambda: jwt.encode(_claims(sub=None), JWT_SECRET, algorithm="HS256"),
    "no-expiry": lambda: jwt.encode(_claims(exp=None), JWT_SECRET, algorithm="HS256"),
    "garbage": lambda: "not.a.jwt",
}


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
def test_a_bad_token_is_401(api: Api, kind: str) -> None:
    token = BAD_TOKENS[kind]()
    r = api.client.post(C, json={"kind": "person", "name": "X"}, headers={"Authorization": f"Bearer {token}"})
    assert_problem(r, 401)
    assert event_log_position(api) == 0


def test_a_token_in_another_scheme_is_401(api: Api) -> None:
    token = api.tokens.issue("rep-1", "sales_rep")
    r = api.client.get(f"{C}/{uuid.uuid4()}", headers={"Authorization": f"Basic {token}"})
    assert_problem(r, 401)


def test_an_analyst_may_not_write(api: Api) -> None:
    r = api.post(C, {"kind": "person", "name": "X"}, user="ann", role="analyst")
    body = assert_problem(r, 403)
    assert "analyst" in body["detail"]
    assert event_log_position(api) == 0
    # A service agent may not open deals either.
    cid = api.register().json()["id"]
    r = api.post(O, {"customer_id": cid, "title": "T", "amount": "1", "currency": "EUR"}, role="service_agent")
    assert_problem(r, 403)


# -- writing with versions -------------------------------------------------------------
def test_register_then_change_with_if_match(api: Api) -> None:
    r = api.register("Grace Hopper", contacts=[{"kind": "email", "value": "grace@navy.example"}])
    body = r.json()
    cid = body["id"]
    assert r.headers["etag"] == '"1"'
    assert r.headers["location"] == f"{C}/{cid}"
    assert body["type"] == "customer" and body["version"] == 1
    assert isinstance(body["position"], int) and body["position"] >= 1
    uuid.UUID(cid)

    r = api.patch(f"{C}/{cid}", {"industry": "Navy"})
    assert_problem(r, 428, "If-Match")

    r = api.patch(f"{C}/{cid}", {"industry": "Navy"}, **if_match(1))
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == '"2"'
    assert r.json()["version"] == 2
    assert "location" not in r.headers

    r = api.patch(f"{C}/{cid}", {"industry": "Computing"}, **if_match(1))
    problem = assert_problem(r, 409, "If-Match")
    assert problem["current_version"] == 2
    assert r.headers["etag"] == '"2"'

    r = api.patch(f"{C}/{cid}", {"industry": "Computing"}, **{"If-Match": "not-an-etag"})
    assert_problem(r, 422, "If-Match")

    r = api.get(f"{C}/{cid}/current")
    assert r.status_code == 200
    assert r.headers["etag"] == '"2"'
    record = r.json()
    assert record["version"] == 2 and record["data"]["industry"] == "Navy"
    assert record["data"]["name"] == "Grace Hopper"
    assert [c["value"] for c in record["data"]["contacts"]] == ["grace@navy.example"]
    assert len(api.events(f"{C}/{cid}")) == 2


def test_an_unknown_field_is_422_naming_it(api: Api) -> None:
    r = api.post(C, {"kind": "person", "name": "X", "nickname": "Y"})
    body = assert_problem(r, 422, "nickname")
    assert body["errors"][0]["field"] == "nickname"
    r = api.post(C, {"kind": "person", "name": "X", "contacts": [{"kind": "email", "value": "nope"}]})
    assert_problem(r, 422, "contacts.0.value")
    r = api.post(C, {"kind": "person", "name": "X", "contacts": [{"kind": "phone", "value": "12"}]})
    assert_problem(r, 422, "contacts.0.value")
    r = api.post(O, {"customer_id": str(uuid.uuid4()), "title": "T", "amount": "1", "currency": "eur"})
    assert_problem(r, 422, "currency")
    assert event_log_position(api) == 0


def test_malformed_json_is_400_and_a_non_object_body_422(api: Api) -> None:
    headers = {**api.auth(role="sales_rep"), "Content-Type": "application/json"}
    r = api.client.post(C, content=b'{"kind": "person", "name": ', headers=headers)
    assert_problem(r, 400, "body")
    r = api.client.post(C, content=b"[1, 2]", headers=headers)
    assert_problem(r, 422, "body")
    assert event_log_position(api) == 0


def test_a_repeated_idempotency_key_replays_the_first_answer(api: Api) -> None:
    body = {"kind": "company", "name": "Once Only Ltd"}
    first = api.post(C, body, **{"Idempotency-Key": "create-once-1"})
    assert first.status_code == 201
    assert "idempotency-replayed" not in first.headers
    again = api.post(C, body, **{"Idempotency-Key": "create-once-1"})
    assert again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotency-replayed"] == "true"
    assert again.headers["etag"] == first.headers["etag"]
    assert again.headers["location"] == first.headers["location"]
    cid = first.json()["id"]
    assert len(api.events(f"{C}/{cid}")) == 1
    assert event_log_position(api) == 1

    r = api.post(C, {"kind": "company", "name": "Something Else"}, **{"Idempotency-Key": "create-once-1"})
    assert_problem(r, 422, "Idempotency-Key")
    r = api.post(C, body, **{"Idempotency-Key": "bad key with spaces"})
    assert_problem(r, 422, "Idempotency-Key")
    assert event_log_position(api) == 1


def test_events_carry_who_and_the_correlation_id(api: Api) -> None:
    r = api.post(C, {"kind": "person", "name": "Traced"}, user="rep-42",
                 **{"X-Correlation-ID": "trace-abc-123"})
    assert r.status_code == 201
    assert r.headers["x-correlation-id"] == "trace-abc-123"
    cid = r.json()["id"]
    (event,) = api.events(f"{C}/{cid}", user="rep-42")
    assert event["actor_id"] == "rep-42"
    assert event["actor_role"] == "sales_rep"
    assert event["correlation_id"] == "trace-abc-123"
    assert event["type"] == "CustomerRegistered"
    assert event["aggregate_id"] == cid and event["aggregate_version"] == 1
    assert event["position"] == r.json()["position"]
    assert event["data"]["name"] == "Traced"
    assert event["causation_id"] == event["command_id"]

    # Without the header, one is made up and echoed.
    r = api.post(f"{C}/{cid}/tags", {"tag": "vip"}, user="rep-42")
    generated = r.headers["x-correlation-id"]
    assert generated and generated != "trace-abc-123"
    assert api.events(f"{C}/{cid}", user="rep-42")[1]["correlation_id"] == generated


def test_an_analyst_sees_personal_fields_masked(api: Api) -> None:
    cid = api.register("Masked Person", contacts=[{"kind": "email", "value": "masked@example.com"}],
                       industry="Retail").json()["id"]
    api.patch(f"{C}/{cid}", {"name": "Masked Person II"}, **if_match(1))

    events = api.events(f"{C}/{cid}", role="analyst")
    assert events[0]["data"]["name"] == "***"
    # A list keeps its type: each contact point is there, its kind kept, its value masked.
    (contact,) = events[0]["data"]["contacts"]
    assert (contact["kind"], contact["value"]) == ("email", "***")
    assert events[0]["data"]["industry"] == "Retail"
    assert events[1]["data"]["personal_changes"] == {"name": {"before": "***", "after": "***"}}
    r = api.get(f"{C}/{cid}/current", role="analyst")
    assert r.status_code == 200
    assert r.json()["data"]["name"] == "***"
    assert [(c["kind"], c["value"]) for c in r.json()["data"]["contacts"]] == [("email", "***")]
    assert "masked@example.com" not in r.text and "Masked Person" not in r.text

    events = api.events(f"{C}/{cid}", role="manager")
    assert events[0]["data"]["name"] == "Masked Person"
    assert events[1]["data"]["personal_changes"]["name"]["after"] == "Masked Person II"

    r = api.post(I, {"customer_id": cid, "channel": "email", "direction": "outbound",
                     "subject": "Secret subject", "body": "Secret body", "participants": ["Eve"]})
    assert r.status_code == 201, r.text
    iid = r.json()["id"]
    (event,) = api.events(f"{I}/{iid}", role="analyst")
    assert (event["data"]["subject"], event["data"]["body"], event["data"]["participants"]) == ("***", "***", ["***"])
    assert event["data"]["channel"] == "email" and event["data"]["customer_id"] == cid
    r = api.get(f"{I}/{iid}/current", role="analyst")
    assert "Secret" not in r.text and r.json()["data"]["body"] == "***"


def test_events_are_paged_by_version(api: Api) -> None:
    cid = api.register().json()["id"]
    for tag in ("a", "b", "c"):
        assert api.post(f"{C}/{cid}/tags", {"tag": tag}).status_code == 200
    r = api.get(f"{C}/{cid}/events?limit=2")
    page = r.json()
    assert r.headers["etag"] == '"4"'
    assert [e["aggregate_version"] for e in page["items"]] == [1, 2]
    assert page["next_after_version"] == 2
    page = api.get(f"{C}/{cid}/events?after_version=2&limit=2").json()
    assert [e["aggregate_version"] for e in page["items"]] == [3, 4]
    assert page["next_after_version"] is None
    positions = [e["position"] for e in api.events(f"{C}/{cid}")]
    assert positions == sorted(positions) and len(set(positions)) == 4
    assert_problem(api.get(f"{C}/{cid}/events?limit=0"), 422, "limit")


# -- life cycles ----------------------------------------------------------------------
def test_an_opportunity_walks_to_won_and_then_refuses_stage_changes(api: Api) -> None:
    cid = api.register().json()["id"]
    r = api.post(O, {"customer_id": cid, "title": "Big deal", "amount": "1000.00", "currency": "EUR"})
    assert r.status_code == 201, r.text
    oid = r.json()["id"]
    assert r.headers["location"] == f"{O}/{oid}"
    version = 1
    for stage in ("needs_analysis", "proposal", "negotiation"):
        r = api.post(f"{O}/{oid}/stage", {"stage": stage}, **if_match(version))
        assert r.status_code == 200, r.text
        version += 1
        assert r.headers["etag"] == f'"{version}"'
    r = api.post(f"{O}/{oid}/won", None, **if_match(version))
    assert r.status_code == 200, r.text
    version += 1

    record = api.get(f"{O}/{oid}/current").json()
    assert record["data"]["status"] == "won"
    assert record["data"]["probability"] == 100
    assert record["data"]["amount"] == "1000.00"

    r = api.post(f"{O}/{oid}/stage", {"stage": "proposal"}, **if_match(version))
    assert_problem(r, 409, "status")
    r = api.post(f"{O}/{oid}/stage", {"stage": "sideways"}, **if_match(version))
    assert_problem(r, 409)
    assert [e["type"] for e in api.events(f"{O}/{oid}")] == [
        "OpportunityOpened", "OpportunityStageChanged", "OpportunityStageChanged",
        "OpportunityStageChanged", "OpportunityWon",
    ]


def test_a_service_request_from_opening_to_rating(api: Api) -> None:
    cid = api.register().json()["id"]
    agent = {"user": "agent-7", "role": "service_agent"}
    r = api.post(S, {"customer_id": cid, "channel": "email", "type": "incident",
                     "subject": "Broken", "description": "It broke"}, **agent)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    r = api.post(f"{S}/{sid}/assignment", {"assignee_id": "agent-7"}, **agent, **if_match(1))
    assert r.status_code == 200, r.text
    r = api.post(f"{S}/{sid}/status", {"status": "in_progress"}, **agent, **if_match(2))
    assert r.status_code == 200, r.text
    r = api.post(f"{S}/{sid}/comments", {"body": "Looking into it", "visibility": "customer"}, **agent)
    assert r.status_code == 200, r.text
    comment_id = r.json()["result"]["comment_id"]
    uuid.UUID(comment_id)
    r = api.post(f"{S}/{sid}/resolution", {"resolution": "Fixed it"}, **agent, **if_match(4))
    assert r.status_code == 200, r.text
    r = api.post(f"{S}/{sid}/rating", {"rating": 5, "comment": "Great"}, **agent)
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == '"6"'

    r = api.post(f"{S}/{sid}/rating", {"rating": 1}, **agent)
    assert_problem(r, 409, "rating")

    data = api.get(f"{S}/{sid}/current").json()["data"]
    assert (data["status"], data["assignee_id"], data["rating"]) == ("resolved", "agent-7", 5)
    assert data["resolution"] == "Fixed it"
    assert [c["comment_id"] for c in data["comments"]] == [comment_id]
    assert len(api.events(f"{S}/{sid}")) == 6


def test_a_task_is_created_and_completed_once(api: Api) -> None:
    cid = api.register().json()["id"]
    r = api.post(T, {"title": "Call back", "related_type": "customer", "related_id": cid})
    assert r.status_code == 201, r.text
    tid = r.json()["id"]
    r = api.post(f"{T}/{tid}/complete", None)
    assert_problem(r, 428, "If-Match")
    r = api.post(f"{T}/{tid}/complete", None, **if_match(1))
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == '"2"'
    data = api.get(f"{T}/{tid}/current").json()["data"]
    assert data["status"] == "completed"
    assert data["assignee_id"] == "rep-1" and data["customer_id"] == cid
    r = api.post(f"{T}/{tid}/complete", None, **if_match(2))
    assert_problem(r, 409, "status")


def test_an_unknown_id_is_404_problem(api: Api) -> None:
    assert_problem(api.get(f"{C}/{uuid.uuid4()}/current"), 404)
    assert_problem(api.get(f"{T}/{uuid.uuid4()}/events"), 404)
    cid = api.register().json()["id"]
    assert_problem(api.get(f"{O}/{cid}/current"), 404)  # a customer is not an opportunity
    assert_problem(api.post(f"{T}/{uuid.uuid4()}/comments", {"body": "x"}), 404)
    r = api.get(f"{C}/not-a-uuid")
    assert_problem(r, 422)


def test_a_back_dated_interaction_keeps_both_times(api: Api) -> None:
    cid = api.register().json()["id"]
    occurred = (datetime.now(UTC) - timedelta(days=3)).replace(microsecond=0)
    before = datetime.now(UTC)
    r = api.post(I, {"customer_id": cid, "channel": "call", "direction": "inbound",
                     "subject": "Late log", "occurred_at": occurred.isoformat()})
    after = datetime.now(UTC)
    assert r.status_code == 201, r.text
    (event,) = api.events(f"{I}/{r.json()['id']}")
    assert datetime.fromisoformat(event["occurred_at"]) == occurred
    recorded = datetime.fromisoformat(event["recorded_at"])
    assert before - timedelta(seconds=2) <= recorded <= after + timedelta(seconds=2)

    future = datetime.now(UTC) + timedelta(days=1)
    r = api.post(I, {"customer_id": cid, "channel": "call", "direction": "inbound",
                     "subject": "From the future", "occurred_at": future.isoformat()})
    assert_problem(r, 422, "occurred_at")
    r = api.post(I, {"customer_id": cid, "channel": "call", "direction": "inbound",
                     "subject": "No zone", "occurred_at": "2024-01-01T10:00:00"})
    assert_problem(r, 422, "occurred_at")
    assert event_log_position(api) == 2


# -- the console script -------------------------------------------------------------
def _crm_script() -> str:
    script = Path(sys.executable).parent / "crm"
    assert script.exists(), f"the console script is not installed at {script}"
    return str(script)


def _clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update({"CRM_DATA_DIR": str(tmp_path / "cli-data"), **extra})
    return env


def test_crm_token_prints_a_token_the_issuer_verifies(tmp_path: Path) -> None:
    secret = "cli-secret-" + "z" * 32
    done = subprocess.run(
        [_crm_script(), "token", "--user", "u", "--role", "sales_rep"],
        env=_clean_env(tmp_path, CRM_JWT_SECRET=secret), capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    principal = TokenIssuer(JwtSettings(secret=secret, issuer="crm-core", audience="crm-api")).verify(token)
    assert (principal.id, principal.role) == ("u", "sales_rep")
    with pytest.raises(Exception, match="401"):
        TokenIssuer(JwtSettings(secret="another-" + secret, issuer="crm-core", audience="crm-api")).verify(token)

    bad = subprocess.run(
        [_crm_script(), "token", "--user", "u", "--role", "emperor"],
        env=_clean_env(tmp_path, CRM_JWT_SECRET=secret), capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 2
    assert "role must be one of" in bad.stderr


@pytest.mark.slow
def test_crm_serve_answers_and_stops_on_sigterm(database_url: str, pg_env: dict[str, str], tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = _clean_env(
        tmp_path, CRM_DATABASE_URL=database_url, CRM_JWT_SECRET=JWT_SECRET, CRM_MASTER_KEY=MASTER_KEY,
        CRM_DB_POOL_SIZE="2", CRM_LOG_FORMAT="json",
    )
    proc = subprocess.Popen([_crm_script(), "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for_health(base, timeout=30, proc=proc)
        issuer = TokenIssuer(JwtSettings(secret=JWT_SECRET, issuer="crm-core", audience="crm-api"))
        headers = {"Authorization": f"Bearer {issuer.issue('rep-1', 'sales_rep')}"}
        r = httpx.post(f"{base}{C}", json={"kind": "person", "name": "Served"}, headers=headers, timeout=10)
        assert r.status_code == 201, r.text
        r = httpx.get(f"{base}{C}/{r.json()['id']}/current", headers=headers, timeout=10)
        assert r.json()["data"]["name"] == "Served"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise AssertionError("crm serve did not stop on SIGTERM") from None
    assert proc.returncode == 0, err
