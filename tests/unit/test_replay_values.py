"""Pure parts of replay: field-level changes, and the stored form of snapshots."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from uuid import UUID

from events.chain import GENESIS, checkpoint_message, link_hash, subject_of
from events.values import ContactPoint, PurchaseLine
from replay.state import _dec, _enc, field_changes

CONTACT = ContactPoint(UUID(int=1), "email", "a@example.org", "work", None, True)


def test_snapshot_values_round_trip_with_their_types() -> None:
    state = {
        "contacts": {UUID(int=1): CONTACT},
        "purchases": {"SO-1": {"amount": Decimal("10.50"), "purchased_at": datetime(2026, 1, 2, tzinfo=UTC),
                               "lines": 1}},
        "expected_close": date(2026, 3, 31),
        "tags": ["b2b", "vip"],
        "participants": ("u1", "u2"),
        "line": PurchaseLine("SKU", "Licence", Decimal(2), Decimal("9.99")),
        "segment": None,
        "probability": 50,
        "consents": {"email": True},
    }
    back = json.loads(json.dumps({k: _enc(v) for k, v in state.items()}), object_hook=_dec)
    assert back == state
    assert type(back["participants"]) is tuple and type(back["line"]) is PurchaseLine
    assert type(next(iter(back["contacts"]))) is UUID


def test_field_changes_name_fields_and_map_entries() -> None:
    before = {"id": 1, "version": 3, "name": "Mia", "tags": ["a"], "purchases": {"SO-1": 1},
              "consents": {"email": True}}
    after = {"id": 1, "version": 4, "name": "Mia", "tags": ["a", "b"],
             "purchases": {"SO-1": 1, "SO-2": 2}, "consents": {"email": False}, "segment": "smb"}
    assert field_changes(before, after) == [
        {"field": "consents.email", "before": True, "after": False},
        {"field": "purchases.SO-2", "before": None, "after": 2},
        {"field": "segment", "before": None, "after": "smb"},
        {"field": "tags", "before": ["a"], "after": ["a", "b"]},
    ]
    assert field_changes(after, after) == []


def test_a_link_covers_every_part_of_the_stored_event() -> None:
    base = (GENESIS, 7, UUID(int=5), 2, "CustomerTagged", b'{"subject_id":"00000000-0000-0000-0000-000000000005"}')
    link = link_hash(*base)
    for i, other in enumerate([b"\x01" * 32, 8, UUID(int=6), 3, "CustomerUntagged", base[5] + b" "]):
        changed = list(base)
        changed[i] = other
        assert link_hash(*changed) != link  # type: ignore[arg-type]
    assert subject_of(base[5]) == UUID(int=5) and subject_of(b"not json") is None
    assert checkpoint_message(7, link, "t") == f"crm-chain-checkpoint/1|7|{link.hex()}|t".encode()
