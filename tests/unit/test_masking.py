"""Masked personal values keep their JSON type (api/encoding.py ``mask_value``)."""

from __future__ import annotations

from api.encoding import MASK, mask_value, masked_row


def test_text_lists_and_objects_are_masked_in_kind() -> None:
    assert mask_value("Ada Lovelace") == MASK
    assert mask_value(None) is None
    assert mask_value(["ada@example.com", "+44 20"]) == [MASK, MASK]
    contact = {"contact_id": "c1", "kind": "email", "value": "ada@example.com", "label": "work",
               "primary": True, "person_name": "Ada"}
    assert mask_value([contact]) == [{"contact_id": "c1", "kind": "email", "value": MASK, "label": "work",
                                      "primary": True, "person_name": MASK}]
    comment = {"comment_id": "k", "visibility": "internal", "body": "secret", "author_id": "u1",
               "at": "2026-01-01T00:00:00Z"}
    assert mask_value([comment]) == [{**comment, "body": MASK}]
    assert mask_value({"name": {"before": "A", "after": "B"}}) == {"name": {"before": MASK, "after": MASK}}
    assert mask_value({"value": None, "n": 3, "ok": False}) == {"value": None, "n": 3, "ok": False}


def test_a_masked_row_keeps_list_columns_lists() -> None:
    row = {"name": "Ada", "emails": ["a@x.example"], "contacts": [{"kind": "phone", "value": "1"}],
           "phones": [], "industry": "math"}
    out = masked_row(row, personal=("name", "emails", "phones", "contacts"), mask=True)
    assert out == {"name": MASK, "emails": [MASK], "contacts": [{"kind": "phone", "value": MASK}],
                   "phones": [], "industry": "math"}
