"""POST /api/v1/customers/{id}/erasure over HTTP: who may, bad input, unknown ids, the
receipt, an idempotent repeat, and a record closed to changes afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from api.auth import ROLES
from tests.e2e.test_http import C, Api, assert_problem, event_log_position, if_match, served

pytestmark = pytest.mark.postgres


@pytest.fixture
def api(make_system: Callable[..., Any]) -> Iterator[Api]:
    with served(make_system(key_cache_seconds=0.2)) as api:
        yield api


def erase(api: Api, cid: str, body: Any, *, role: str = "data_admin", **headers: str) -> Any:
    return api.post(f"{C}/{cid}/erasure", body, user=f"{role}-1", role=role, **headers)


def test_only_data_admins_and_admins_may_erase(api: Api) -> None:
    cid = api.register("Quirina Vantablack", contacts=[{"kind": "email", "value": "qv@erase.test"}]).json()["id"]
    position = event_log_position(api)
    for role in sorted(set(ROLES) - {"data_admin", "admin"}):
        assert_problem(erase(api, cid, {"reason": "asked"}, role=role), 403)
    assert event_log_position(api) == position
    assert api.get(f"{C}/{cid}/current").json()["data"]["name"] == "Quirina Vantablack"
    r = erase(api, cid, {"reason": "asked"}, role="admin")
    assert r.status_code == 200, r.text
    assert r.json()["event"]["actor"] == {"id": "admin-1", "role": "admin"}


def test_bad_input_and_unknown_ids_change_nothing(api: Api) -> None:
    cid = api.register("Quirina Vantablack").json()["id"]
    position = event_log_position(api)
    assert_problem(erase(api, cid, {}), 422, "reason")
    assert_problem(erase(api, cid, {"reason": ""}), 422, "reason")
    assert_problem(erase(api, cid, {"reason": "x", "name": "y"}), 422, "name")
    assert_problem(erase(api, str(uuid.uuid4()), {"reason": "asked"}), 404)
    r = api.client.post(f"{C}/{cid}/erasure", json={"reason": "asked"})
    assert_problem(r, 401)
    assert event_log_position(api) == position


def test_the_receipt_and_an_idempotent_repeat(api: Api) -> None:
    r = api.register("Quirina Vantablack", contacts=[{"kind": "email", "value": "qv@erase.test"}])
    cid = r.json()["id"]
    version = r.json()["version"]
    r = erase(api, cid, {"reason": "GDPR art. 17", "request_reference": "DSR-9"},
              **{"Idempotency-Key": "erase-qv"})
    assert r.status_code == 200, r.text
    assert "Idempotency-Replayed" not in r.headers
    receipt = r.json()
    assert receipt["customer_id"] == cid and receipt["status"] == "completed"
    assert receipt["event"]["type"] == "CustomerPersonalDataErased"
    assert receipt["event"]["version"] == version + 1
    assert (receipt["event"]["reason"], receipt["event"]["request_reference"]) == ("GDPR art. 17", "DSR-9")
    assert receipt["key"]["destroyed"] is True and receipt["key"]["destroyed_now"] is True
    assert receipt["ledger"]["appended"] is True
    tables = {s["table"]: s["rows"] for s in receipt["stores"]}
    assert tables["crm_email_reservations"] == 1
    assert "crm_subject_keys" in receipt["vacuumed"]["tables"]
    assert receipt["kafka"] == {"status": "not configured"}
    assert "Quirina" not in r.text and "qv@erase.test" not in r.text
    position = event_log_position(api)

    again = erase(api, cid, {"reason": "GDPR art. 17", "request_reference": "DSR-9"},
                  **{"Idempotency-Key": "erase-qv"})
    assert again.status_code == 200
    assert again.headers["Idempotency-Replayed"] == "true"
    assert again.json() == receipt
    assert event_log_position(api) == position
    # The same key for another request is refused, as for every command.
    assert_problem(erase(api, cid, {"reason": "something else"}, **{"Idempotency-Key": "erase-qv"}),
                   422, "Idempotency-Key")
    # A new request: nothing recorded twice, the key stays destroyed.
    third = erase(api, cid, {"reason": "asked again"})
    assert third.status_code == 200
    assert third.json()["event"]["position"] == receipt["event"]["position"]
    assert third.json()["key"]["destroyed_now"] is False
    assert event_log_position(api) == position

    current = api.get(f"{C}/{cid}/current").json()
    assert current["data"]["name"] is None and current["data"]["personal_data_erased"] is True
    events = api.events(f"{C}/{cid}")
    assert [e["type"] for e in events][-1] == "CustomerPersonalDataErased"
    assert events[0]["personal_data_erased"] is True
    body = assert_problem(api.patch(f"{C}/{cid}", {"industry": "retail"}, **if_match(version + 1)), 409)
    assert body["type"].endswith("personal-data-erased")
    # The address is free again: the reservation went with the customer.
    assert api.register("Someone New", contacts=[{"kind": "email", "value": "qv@erase.test"}]).status_code == 201
