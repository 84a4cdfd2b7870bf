"""Customer: given past events, when a command, then new events or a refusal."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID

import pytest

from aggregates.customer import Customer
from aggregates.errors import (
    Duplicate,
    InvalidTransition,
    InvalidValue,
    NotFound,
    PersonalDataErased,
)
from events.base import Actor
from events.customer import (
    ConsentSet,
    ContactAdded,
    ContactRemoved,
    CustomerClassified,
    CustomerDetailsChanged,
    CustomerPersonalDataErased,
    CustomerRegistered,
    CustomerTagged,
    CustomerUntagged,
    LifecycleStageChanged,
    OwnerReassigned,
    PreferencesSet,
    PurchaseRecorded,
)
from events.opportunity import OpportunityOpened
from events.values import ContactPoint, PurchaseLine
from tests.unit.conftest import NOW

CID = UUID("00000000-0000-4000-8000-00000000c001")
EMAIL_ID = UUID("00000000-0000-4000-8000-0000000000e1")
PHONE_ID = UUID("00000000-0000-4000-8000-0000000000e2")
ADDRESS_ID = UUID("00000000-0000-4000-8000-0000000000e3")

EMAIL = ContactPoint(EMAIL_ID, "email", "ada@example.com", "work", None, True)
PHONE = ContactPoint(PHONE_ID, "phone", "+44 20 7946 0000", "", None, False)


def registered(**overrides: object) -> dict[str, object]:
    """The fields of a CustomerRegistered event, with some overridden."""
    fields: dict[str, object] = {
        "kind": "person",
        "name": "Ada Lovelace",
        "contacts": (EMAIL, PHONE),
        "source": "web",
        "owner_id": "u1",
        "lifecycle_stage": "lead",
        "industry": "software",
        "country": "GB",
        "preferred_language": "en",
        "tags": ("vip",),
    }
    fields.update(overrides)
    return fields


@pytest.fixture
def customer(event, given):
    """customer(**registered_overrides): a customer with only its registration."""

    def make(**overrides: object) -> Customer:
        return given(Customer, event(CustomerRegistered, CID, **registered(**overrides)))

    return make


def register_args(**overrides: object) -> dict[str, object]:
    args: dict[str, object] = {
        "customer_id": CID,
        "kind": "person",
        "name": "Ada Lovelace",
        "contacts": [{"contact_id": EMAIL_ID, "kind": "email", "value": "ada@example.com"}],
        "source": "web",
        "owner_id": "u1",
    }
    args.update(overrides)
    return args


# -- register ------------------------------------------------------------------------


def test_register_emits_customer_registered_with_normalised_values(ctx, emitted):
    c = Customer.register(
        ctx(),
        customer_id=CID,
        kind="company",
        name="  Analytical Engines Ltd ",
        contacts=[
            {"contact_id": EMAIL_ID, "kind": "email", "value": "  Info@Engines.EXAMPLE ",
             "label": "main", "primary": True},
            {"contact_id": PHONE_ID, "kind": "phone", "value": "+44 20 7946 0000",
             "person_name": "Charles Babbage"},
        ],
        source="referral",
        owner_id="u7",
        lifecycle_stage="prospect",
        industry="manufacturing",
        country="GB",
        preferred_language="en",
        tags=[" VIP ", "b2b", "vip"],
    )
    assert emitted(c) == [
        (
            CustomerRegistered,
            {
                "kind": "company",
                "name": "Analytical Engines Ltd",
                "contacts": (
                    ContactPoint(EMAIL_ID, "email", "info@engines.example", "main", None, True),
                    ContactPoint(
                        PHONE_ID, "phone", "+44 20 7946 0000", "", "Charles Babbage", False
                    ),
                ),
                "source": "referral",
                "owner_id": "u7",
                "lifecycle_stage": "prospect",
                "industry": "manufacturing",
                "country": "GB",
                "preferred_language": "en",
                "tags": ("b2b", "vip"),
            },
        )
    ]
    assert (c.id, c.version, c.name, c.lifecycle_stage) == (
        CID, 1, "Analytical Engines Ltd", "prospect"
    )
    assert c.emails() == ["info@engines.example"]


def test_register_defaults_to_a_lead_with_no_tags(ctx):
    c = Customer.register(ctx(), **register_args())
    [e] = c.collect_events()
    assert (e.lifecycle_stage, e.tags, e.industry, e.country, e.preferred_language) == (
        "lead", (), None, None, None
    )


def test_register_event_carries_who_when_why(ctx):
    back_dated = datetime(2024, 4, 1, 9, 30, tzinfo=UTC)
    c = Customer.register(
        ctx("imported from fair", occurred_at=back_dated, actor=Actor("u9", "admin")),
        **register_args(),
    )
    [e] = c.collect_events()
    assert (e.originator_id, e.originator_version) == (CID, 1)
    assert e.meta.actor == Actor("u9", "admin")
    assert e.meta.reason == "imported from fair"
    assert (e.meta.occurred_at, e.meta.recorded_at) == (back_dated, NOW)
    assert (e.meta.correlation_id, e.meta.causation_id) == ("corr-1", "cause-1")
    assert c.created_on == back_dated


def test_register_gives_contacts_without_an_id_a_new_id_from_the_context(ctx):
    fresh = iter([UUID(int=101), UUID(int=102), UUID(int=103)])
    c = Customer.register(
        ctx(new_id=lambda: next(fresh)),
        **register_args(contacts=[{"kind": "email", "value": "a@x.io"},
                                  {"kind": "address", "value": "1  Main   St"}]),
    )
    [e] = c.collect_events()
    assert [p.contact_id for p in e.contacts] == [UUID(int=101), UUID(int=102)]
    assert e.contacts[1].value == "1  Main   St"
    assert e.meta.event_id == UUID(int=103)


@pytest.mark.parametrize("stage", ["lead", "prospect", "customer"])
def test_register_accepts_starting_stages(ctx, stage):
    c = Customer.register(ctx(), **register_args(lifecycle_stage=stage))
    assert c.collect_events()[0].lifecycle_stage == stage


@pytest.mark.parametrize(
    ("overrides", "error", "field"),
    [
        ({"kind": "robot"}, InvalidValue, "kind"),
        ({"lifecycle_stage": "churned"}, InvalidValue, "lifecycle_stage"),
        ({"lifecycle_stage": "partner"}, InvalidValue, "lifecycle_stage"),
        ({"name": "   "}, InvalidValue, "name"),
        ({"contacts": [{"kind": "email", "value": f"a{i}@x.io"} for i in range(51)]},
         InvalidValue, "contacts"),
        ({"contacts": [{"kind": "fax", "value": "123"}]}, InvalidValue, "contacts.0.kind"),
        ({"contacts": [{"kind": "email", "value": "a@x.io"}, {"kind": "phone", "value": " "}]},
         InvalidValue, "contacts.1.value"),
        ({"contacts": [{"kind": "email", "value": "ada@example.com"},
                       {"kind": "email", "value": " ADA@Example.COM "}]},
         Duplicate, "contacts.1.value"),
        ({"contacts": [{"kind": "phone", "value": "+44 20 7946 0000"},
                       {"kind": "phone", "value": "+44-(20)-79460000"}]},
         Duplicate, "contacts.1.value"),
        ({"contacts": [{"kind": "address", "value": "1 Main St"},
                       {"kind": "address", "value": " 1  Main\tSt "}]},
         Duplicate, "contacts.1.value"),
        ({"tags": ["ok", "  "]}, InvalidValue, "tag"),
    ],
)
def test_register_refuses(ctx, refused, overrides, error, field):
    with refused(error, field):
        Customer.register(ctx(), **register_args(**overrides))


def test_register_accepts_fifty_contacts_and_the_same_value_under_different_kinds(ctx):
    contacts = [{"kind": "email", "value": f"a{i}@x.io"} for i in range(49)]
    contacts.append({"kind": "address", "value": "a0@x.io"})
    c = Customer.register(ctx(), **register_args(contacts=contacts))
    assert len(c.contacts) == 50


# -- rebuilding ----------------------------------------------------------------------


def test_rebuild_without_a_creating_event_is_not_found(event, refused):
    with refused(NotFound, None):
        Customer.project(None, [event(CustomerTagged, CID, tag="vip")])


def test_rebuild_from_another_aggregates_events_is_not_found(event, refused):
    opened = event(
        OpportunityOpened, CID, customer_id=CID, title="t", amount=Decimal(1), currency="EUR",
        expected_close=None, pipeline="default", stage="qualification", probability=10,
        owner_id="u1",
    )
    with refused(NotFound, None):
        Customer.project(None, [opened])


def test_rebuild_refuses_events_out_of_order(event):
    first = event(CustomerRegistered, CID, **registered())
    with pytest.raises(ValueError):
        Customer.project(None, [first, event(CustomerTagged, CID, version=3, tag="x")])


def test_rebuilt_state_reflects_every_past_event(event, given):
    purchased_at = datetime(2024, 3, 1, tzinfo=UTC)
    c = given(
        Customer,
        event(CustomerRegistered, CID, **registered()),
        event(CustomerDetailsChanged, CID,
              changes={"industry": {"before": "software", "after": "finance"}},
              personal_changes={"name": {"before": "Ada Lovelace", "after": "Ada King"}}),
        event(ContactRemoved, CID, contact_id=PHONE_ID, kind="phone"),
        event(OwnerReassigned, CID, previous_owner_id="u1", owner_id="u2"),
        event(LifecycleStageChanged, CID, from_stage="lead", to_stage="prospect"),
        event(CustomerClassified, CID, previous_segment=None, segment="smb"),
        event(CustomerTagged, CID, tag="b2b"),
        event(CustomerUntagged, CID, tag="vip"),
        event(ConsentSet, CID, channel="email", granted=True, previous=None),
        event(PreferencesSet, CID, changes={"newsletter": {"before": None, "after": "weekly"}}),
        event(PurchaseRecorded, CID, order_id="o-1", amount=Decimal("9.99"), currency="EUR",
              lines=(), purchased_at=purchased_at),
    )
    assert c.version == 11
    assert (c.name, c.industry, c.owner_id, c.lifecycle_stage, c.segment) == (
        "Ada King", "finance", "u2", "prospect", "smb"
    )
    assert list(c.contacts) == [EMAIL_ID]
    assert c.tags == ["b2b"]
    assert c.consents == {"email": True}
    assert c.preferences == {"newsletter": "weekly"}
    assert c.purchases == {
        "o-1": {"amount": Decimal("9.99"), "currency": "EUR", "purchased_at": purchased_at,
                "lines": 0}
    }


# -- change_details ------------------------------------------------------------------


def test_change_details_emits_only_changed_fields_split_personal_and_clear(
    customer, ctx, emitted
):
    c = customer()
    changed = c.change_details(
        ctx(),
        {"name": "  Ada King ", "industry": "finance", "country": "GB", "source": "event"},
    )
    assert changed is True
    assert emitted(c) == [
        (
            CustomerDetailsChanged,
            {
                "changes": {
                    "industry": {"before": "software", "after": "finance"},
                    "source": {"before": "web", "after": "event"},
                },
                "personal_changes": {"name": {"before": "Ada Lovelace", "after": "Ada King"}},
            },
        )
    ]
    assert (c.name, c.industry, c.source, c.version) == ("Ada King", "finance", "event", 2)


def test_change_details_of_clear_fields_only_has_no_personal_changes(customer, ctx, emitted):
    c = customer()
    assert c.change_details(ctx(), {"preferred_language": "fr", "country": None}) is True
    assert emitted(c) == [
        (
            CustomerDetailsChanged,
            {
                "changes": {
                    "preferred_language": {"before": "en", "after": "fr"},
                    "country": {"before": "GB", "after": None},
                },
                "personal_changes": {},
            },
        )
    ]


@pytest.mark.parametrize(
    "changes",
    [{}, {"name": "Ada Lovelace"}, {"name": " Ada Lovelace  ", "industry": "software"}],
)
def test_change_details_to_the_same_values_is_a_no_op(customer, ctx, changes):
    c = customer()
    assert c.change_details(ctx(), changes) is False
    assert c.collect_events() == []


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"owner_id": "u2"}, "owner_id"),
        ({"tags": ["x"], "kind": "company", "name": "X"}, "kind"),
        ({"name": "  "}, "name"),
        ({"name": None}, "name"),
        ({"source": ""}, "source"),
    ],
)
def test_change_details_refuses_invalid_changes(customer, ctx, refused, changes, field):
    c = customer()
    with refused(InvalidValue, field, c):
        c.change_details(ctx(), changes)


def _erased_registration(event):
    """A CustomerRegistered as read back after the customer's key was destroyed."""
    e = event(CustomerRegistered, CID, **registered(name=None, contacts=()))
    object.__setattr__(e, "personal_data_erased", True)
    return e


def test_change_details_of_an_erased_customer_is_refused(event, given, ctx, refused):
    c = given(Customer, _erased_registration(event))
    assert c.personal_data_erased is True
    assert c.name is None
    with refused(PersonalDataErased, None, c):
        c.change_details(ctx(), {"name": "New Name"})
    with refused(PersonalDataErased, None, c):
        c.change_details(ctx(), {"industry": "finance"})


def test_erased_customer_refuses_contact_changes(event, given, ctx, refused):
    c = given(Customer, _erased_registration(event))
    with refused(PersonalDataErased, None, c):
        c.add_contact(ctx(), {"kind": "email", "value": "new@example.com"})
    with refused(PersonalDataErased, None, c):
        c.remove_contact(ctx(), EMAIL_ID)


@pytest.mark.parametrize(
    "change",
    [
        lambda c, ctx: c.reassign_owner(ctx, "u2"),
        lambda c, ctx: c.tag(ctx, "vip"),
        lambda c, ctx: c.set_consent(ctx, "email", True),
        lambda c, ctx: c.set_preferences(ctx, {"contact_time": "morning"}),
    ],
)
def test_an_erased_customer_is_closed_to_every_change(event, given, ctx, emitted, change):
    c = given(Customer, _erased_registration(event))
    with pytest.raises(PersonalDataErased):
        change(c, ctx())
    assert emitted(c) == []


def test_erased_details_change_in_history_leaves_the_fields_alone(event, given):
    c = given(
        Customer,
        event(CustomerRegistered, CID, **registered()),
        event(CustomerDetailsChanged, CID, changes={"country": {"before": "GB", "after": "FR"}},
              personal_changes=None),
    )
    assert (c.name, c.country) == ("Ada Lovelace", "FR")


# -- add_contact / remove_contact ----------------------------------------------------


def test_add_contact_emits_contact_added_with_a_new_id(customer, ctx, emitted):
    c = customer()
    point = c.add_contact(
        ctx(new_id=lambda: UUID(int=7)),
        {"kind": "email", "value": "  Ada.Home@Example.com", "label": "home"},
    )
    expected = ContactPoint(UUID(int=7), "email", "ada.home@example.com", "home", None, False)
    assert point == expected
    assert emitted(c) == [(ContactAdded, {"contact": expected})]
    assert c.contacts[UUID(int=7)] == expected
    assert c.emails() == ["ada@example.com", "ada.home@example.com"]


def test_add_contact_keeps_a_given_contact_id(customer, ctx, emitted):
    c = customer()
    c.add_contact(ctx(), {"contact_id": ADDRESS_ID, "kind": "address", "value": "1 Main St",
                          "person_name": "Ada", "primary": True})
    assert emitted(c) == [
        (ContactAdded,
         {"contact": ContactPoint(ADDRESS_ID, "address", "1 Main St", "", "Ada", True)})
    ]


@pytest.mark.parametrize(
    "contact",
    [
        {"kind": "email", "value": " ADA@Example.com "},
        {"kind": "phone", "value": "+442079460000"},
    ],
)
def test_add_contact_refuses_a_value_the_customer_already_has(customer, ctx, refused, contact):
    c = customer()
    with refused(Duplicate, "value", c) as err:
        c.add_contact(ctx(), contact)
    existing = EMAIL_ID if contact["kind"] == "email" else PHONE_ID
    assert err.value.extra == {"contact_id": str(existing)}


def test_add_contact_accepts_the_same_text_under_another_kind(customer, ctx, emitted):
    c = customer()
    c.add_contact(ctx(new_id=lambda: ADDRESS_ID), {"kind": "address", "value": "ada@example.com"})
    [(cls, payload)] = emitted(c)
    assert cls is ContactAdded
    assert payload["contact"].kind == "address"


@pytest.mark.parametrize(
    ("contact", "field"),
    [
        ({"kind": "pager", "value": "123"}, "kind"),
        ({"value": "123"}, "kind"),
        ({"kind": "email", "value": "   "}, "value"),
        ({"kind": "email"}, "value"),
    ],
)
def test_add_contact_refuses_invalid_contacts(customer, ctx, refused, contact, field):
    c = customer()
    with refused(InvalidValue, field, c):
        c.add_contact(ctx(), contact)


def test_add_contact_refuses_a_fifty_first_contact(customer, ctx, refused):
    points = tuple(
        ContactPoint(UUID(int=1000 + i), "email", f"a{i}@x.io") for i in range(50)
    )
    c = customer(contacts=points)
    with refused(InvalidValue, "contacts", c):
        c.add_contact(ctx(), {"kind": "phone", "value": "+1 555 0100"})


def test_remove_contact_emits_contact_removed(customer, ctx, emitted):
    c = customer()
    assert c.remove_contact(ctx(), PHONE_ID) == PHONE
    assert emitted(c) == [(ContactRemoved, {"contact_id": PHONE_ID, "kind": "phone"})]
    assert list(c.contacts) == [EMAIL_ID]


def test_remove_unknown_contact_is_not_found(customer, ctx, refused):
    c = customer()
    with refused(NotFound, "contact_id", c):
        c.remove_contact(ctx(), ADDRESS_ID)


def test_removed_contact_cannot_be_removed_twice_but_can_be_added_again(
    event, given, ctx, refused, emitted
):
    c = given(
        Customer,
        event(CustomerRegistered, CID, **registered()),
        event(ContactRemoved, CID, contact_id=EMAIL_ID, kind="email"),
    )
    with refused(NotFound, "contact_id", c):
        c.remove_contact(ctx(), EMAIL_ID)
    c.add_contact(ctx(), {"contact_id": ADDRESS_ID, "kind": "email", "value": "ada@example.com"})
    assert [cls for cls, _ in emitted(c)] == [ContactAdded]


# -- owner, lifecycle, segment -------------------------------------------------------


def test_reassign_owner_emits_owner_reassigned(customer, ctx, emitted):
    c = customer()
    assert c.reassign_owner(ctx(), "u2") is True
    assert emitted(c) == [(OwnerReassigned, {"previous_owner_id": "u1", "owner_id": "u2"})]
    assert c.owner_id == "u2"


def test_reassign_to_the_current_owner_is_a_no_op(customer, ctx):
    c = customer()
    assert c.reassign_owner(ctx(), "u1") is False
    assert c.collect_events() == []


STAGES = ("lead", "prospect", "customer", "churned")
ALLOWED_LIFECYCLE = {
    ("lead", "prospect"),
    ("lead", "customer"),
    ("prospect", "lead"),
    ("prospect", "customer"),
    ("customer", "churned"),
    ("churned", "customer"),
    ("churned", "prospect"),
}


@pytest.fixture
def customer_in_stage(event, given):
    """A customer who reached ``stage`` through lifecycle events."""
    paths = {
        "lead": [],
        "prospect": [("lead", "prospect")],
        "customer": [("lead", "customer")],
        "churned": [("lead", "customer"), ("customer", "churned")],
    }

    def make(stage: str) -> Customer:
        events = [event(CustomerRegistered, CID, **registered())]
        for from_stage, to_stage in paths[stage]:
            events.append(
                event(LifecycleStageChanged, CID, from_stage=from_stage, to_stage=to_stage)
            )
        c = given(Customer, *events)
        assert c.lifecycle_stage == stage
        return c

    return make


@pytest.mark.parametrize("to_stage", STAGES)
@pytest.mark.parametrize("from_stage", STAGES)
def test_lifecycle_transitions_table(customer_in_stage, ctx, refused, emitted,
                                     from_stage, to_stage):
    c = customer_in_stage(from_stage)
    if (from_stage, to_stage) in ALLOWED_LIFECYCLE:
        c.change_lifecycle_stage(ctx("qualified on call"), to_stage)
        assert emitted(c) == [
            (LifecycleStageChanged, {"from_stage": from_stage, "to_stage": to_stage})
        ]
        assert c.lifecycle_stage == to_stage
    else:
        with refused(InvalidTransition, "stage", c) as err:
            c.change_lifecycle_stage(ctx("qualified on call"), to_stage)
        assert set(err.value.extra["allowed"]) == {
            t for f, t in ALLOWED_LIFECYCLE if f == from_stage
        }


def test_lifecycle_change_records_its_reason(customer, ctx):
    c = customer()
    c.change_lifecycle_stage(ctx("signed the contract"), "customer")
    [e] = c.collect_events()
    assert e.meta.reason == "signed the contract"


def test_lifecycle_change_to_an_unknown_stage_is_invalid(customer, ctx, refused):
    c = customer()
    with refused(InvalidValue, "stage", c):
        c.change_lifecycle_stage(ctx("why"), "partner")


@pytest.mark.parametrize("reason", [None, ""])
def test_lifecycle_change_needs_a_reason(customer, ctx, refused, reason):
    c = customer()
    with refused(InvalidValue, "reason", c):
        c.change_lifecycle_stage(ctx(reason), "prospect")


def test_classify_emits_customer_classified(event, given, ctx, emitted):
    c = given(Customer, event(CustomerRegistered, CID, **registered()))
    assert c.classify(ctx("revenue band"), "smb") is True
    assert c.classify(ctx("grew"), "enterprise") is True
    assert emitted(c) == [
        (CustomerClassified, {"previous_segment": None, "segment": "smb"}),
        (CustomerClassified, {"previous_segment": "smb", "segment": "enterprise"}),
    ]
    assert (c.segment, c.version) == ("enterprise", 3)


def test_classify_into_the_current_segment_is_a_no_op(event, given, ctx):
    c = given(
        Customer,
        event(CustomerRegistered, CID, **registered()),
        event(CustomerClassified, CID, previous_segment=None, segment="smb"),
    )
    assert c.classify(ctx("again"), "smb") is False
    assert c.collect_events() == []


def test_classify_needs_a_reason_even_when_nothing_changes(customer, ctx, refused):
    c = customer()
    with refused(InvalidValue, "reason", c):
        c.classify(ctx(), "smb")


# -- tags ----------------------------------------------------------------------------


def test_tag_emits_customer_tagged_normalised(customer, ctx, emitted):
    c = customer()
    assert c.tag(ctx(), "  Key-Account ") is True
    assert emitted(c) == [(CustomerTagged, {"tag": "key-account"})]
    assert c.tags == ["key-account", "vip"]


def test_tag_already_present_is_a_no_op(customer, ctx):
    c = customer()
    assert c.tag(ctx(), "VIP") is False
    assert c.collect_events() == []


def test_tag_refuses_a_blank_tag(customer, ctx, refused):
    c = customer()
    with refused(InvalidValue, "tag", c):
        c.tag(ctx(), "   ")


def test_tag_refuses_a_fifty_first_tag_but_not_a_present_one(customer, ctx, refused):
    c = customer(tags=tuple(f"t{i:02}" for i in range(50)))
    with refused(InvalidValue, "tag", c):
        c.tag(ctx(), "one-more")
    assert c.tag(ctx(), "t07") is False


def test_untag_emits_customer_untagged(customer, ctx, emitted):
    c = customer(tags=("b2b", "vip"))
    assert c.untag(ctx(), " VIP") is True
    assert emitted(c) == [(CustomerUntagged, {"tag": "vip"})]
    assert c.tags == ["b2b"]


def test_untag_of_an_absent_tag_is_a_no_op(customer, ctx):
    c = customer()
    assert c.untag(ctx(), "b2b") is False
    assert c.collect_events() == []


def test_untag_refuses_a_blank_tag(customer, ctx, refused):
    c = customer()
    with refused(InvalidValue, "tag", c):
        c.untag(ctx(), "")


# -- consent and preferences ---------------------------------------------------------


def test_set_consent_emits_consent_set_with_the_previous_value(customer, ctx, emitted):
    c = customer()
    assert c.set_consent(ctx(), "email", True) is True
    assert c.set_consent(ctx(), "email", False) is True
    assert c.set_consent(ctx(), "sms", False) is True
    assert emitted(c) == [
        (ConsentSet, {"channel": "email", "granted": True, "previous": None}),
        (ConsentSet, {"channel": "email", "granted": False, "previous": True}),
        (ConsentSet, {"channel": "sms", "granted": False, "previous": None}),
    ]
    assert c.consents == {"email": False, "sms": False}


def test_set_consent_to_the_current_value_is_a_no_op(event, given, ctx):
    c = given(
        Customer,
        event(CustomerRegistered, CID, **registered()),
        event(ConsentSet, CID, channel="phone", granted=False, previous=None),
    )
    assert c.set_consent(ctx(), "phone", False) is False
    assert c.collect_events() == []


def test_set_consent_refuses_an_unknown_channel(customer, ctx, refused):
    c = customer()
    with refused(InvalidValue, "channel", c):
        c.set_consent(ctx(), "fax", True)


def test_set_preferences_emits_only_the_changed_keys(event, given, ctx, emitted):
    c = given(
        Customer,
        event(CustomerRegistered, CID, **registered()),
        event(PreferencesSet, CID,
              changes={"newsletter": {"before": None, "after": "weekly"},
                       "calls": {"before": None, "after": False}}),
    )
    changed = c.set_preferences(ctx(), {"newsletter": "monthly", "calls": False, "lang": "en"})
    assert changed is True
    assert emitted(c) == [
        (PreferencesSet,
         {"changes": {"newsletter": {"before": "weekly", "after": "monthly"},
                      "lang": {"before": None, "after": "en"}}})
    ]
    assert c.preferences == {"newsletter": "monthly", "calls": False, "lang": "en"}


@pytest.mark.parametrize("preferences", [{}, {"newsletter": "weekly"}])
def test_set_preferences_without_a_change_is_a_no_op(event, given, ctx, preferences):
    c = given(
        Customer,
        event(CustomerRegistered, CID, **registered()),
        event(PreferencesSet, CID, changes={"newsletter": {"before": None, "after": "weekly"}}),
    )
    assert c.set_preferences(ctx(), preferences) is False
    assert c.collect_events() == []


# -- purchases -----------------------------------------------------------------------

PURCHASED_AT = datetime(2024, 4, 30, 15, 0, tzinfo=UTC)


def line(sku: str, quantity: str, unit_price: str) -> dict[str, object]:
    return {"sku": sku, "description": f"{sku} item", "quantity": Decimal(quantity),
            "unit_price": Decimal(unit_price)}


def test_record_purchase_emits_purchase_recorded(customer, ctx, emitted):
    c = customer()
    c.record_purchase(
        ctx(), order_id="o-1", amount=Decimal("25.49"), currency="EUR",
        lines=[line("A", "2", "10.00"), line("B", "1.5", "3.66")],
        purchased_at=PURCHASED_AT,
    )
    assert emitted(c) == [
        (
            PurchaseRecorded,
            {
                "order_id": "o-1",
                "amount": Decimal("25.49"),
                "currency": "EUR",
                "lines": (
                    PurchaseLine("A", "A item", Decimal("2"), Decimal("10.00")),
                    PurchaseLine("B", "B item", Decimal("1.5"), Decimal("3.66")),
                ),
                "purchased_at": PURCHASED_AT,
            },
        )
    ]
    assert c.purchases["o-1"] == {
        "amount": Decimal("25.49"), "currency": "EUR", "purchased_at": PURCHASED_AT, "lines": 2
    }


def test_record_purchase_without_lines_takes_the_amount_as_given(customer, ctx, emitted):
    c = customer()
    c.record_purchase(ctx(), order_id="o-2", amount=Decimal("0"), currency="USD", lines=[],
                      purchased_at=PURCHASED_AT)
    [(cls, payload)] = emitted(c)
    assert (cls, payload["amount"], payload["lines"]) == (PurchaseRecorded, Decimal("0"), ())


@pytest.mark.parametrize(
    ("amount", "currency", "lines"),
    [
        ("1500", "JPY", [line("A", "3", "500")]),
        ("1.234", "KWD", [line("A", "2", "0.617")]),
        ("10.5", "USD", []),
        ("7", "CLF", []),
        ("7.1234", "CLF", []),
        ("999999999999999.99", "EUR", []),
    ],
)
def test_record_purchase_accepts_the_currency_minor_units(customer, ctx, amount, currency,
                                                          lines):
    c = customer()
    c.record_purchase(ctx(), order_id="o", amount=Decimal(amount), currency=currency,
                      lines=lines, purchased_at=PURCHASED_AT)
    assert [type(e) for e in c.collect_events()] == [PurchaseRecorded]


@pytest.mark.parametrize(
    ("amount", "currency", "lines", "field"),
    [
        ("10", "XYZ", [], "currency"),
        ("10", "usd", [], "currency"),
        ("100.5", "JPY", [], "amount"),
        ("100.0", "JPY", [], "amount"),
        ("1.2345", "KWD", [], "amount"),
        ("1.001", "USD", [], "amount"),
        ("-1", "USD", [], "amount"),
        ("NaN", "USD", [], "amount"),
        ("Infinity", "USD", [], "amount"),
        ("1E+15", "USD", [], "amount"),
        ("20.00", "EUR", [line("A", "2", "10.00"), line("B", "1", "0.01")], "amount"),
        ("0", "EUR", [line("A", "0", "10.00")], "lines.0.quantity"),
        ("0", "EUR", [line("A", "1", "0"), line("B", "-1", "10.00")], "lines.1.quantity"),
        ("10", "JPY", [line("A", "1", "10"), line("B", "1", "0.5")], "lines.1.unit_price"),
        ("10", "EUR", [line("A", "1", "-10")], "lines.0.unit_price"),
    ],
)
def test_record_purchase_refuses(customer, ctx, refused, amount, currency, lines, field):
    c = customer()
    with refused(InvalidValue, field, c):
        c.record_purchase(ctx(), order_id="o-9", amount=Decimal(amount), currency=currency,
                          lines=lines, purchased_at=PURCHASED_AT)


def test_record_purchase_refuses_an_order_already_recorded(event, given, ctx, refused):
    c = given(
        Customer,
        event(CustomerRegistered, CID, **registered()),
        event(PurchaseRecorded, CID, order_id="o-1", amount=Decimal("5"), currency="EUR",
              lines=(), purchased_at=PURCHASED_AT),
    )
    with refused(Duplicate, "order_id", c):
        c.record_purchase(ctx(), order_id="o-1", amount=Decimal("5"), currency="EUR",
                          lines=[], purchased_at=PURCHASED_AT)


def test_emails_lists_normalised_addresses_only(customer):
    c = customer(contacts=(
        ContactPoint(UUID(int=1), "email", "Ada@Example.com "),
        ContactPoint(UUID(int=2), "phone", "+1 555"),
        ContactPoint(UUID(int=3), "email", None),
    ))
    assert c.emails() == ["ada@example.com"]


def test_an_erasure_is_recorded_once_with_its_reason_and_no_personal_data(event, given, ctx, emitted):
    c = given(Customer, event(CustomerRegistered, CID, **registered()))
    assert c.erase_personal_data(ctx("GDPR art. 17"), "DSR-1") is True
    [(cls, payload)] = emitted(c)
    assert (cls, payload) == (CustomerPersonalDataErased, {"request_reference": "DSR-1"})
    assert not CustomerPersonalDataErased.personal_fields
    # Recorded: the record refuses changes at once, before its key is destroyed.
    assert c.personal_data_erased is True
    with pytest.raises(PersonalDataErased):
        c.change_details(ctx(), {"name": "Someone Else"})
    assert c.erase_personal_data(ctx("asked again"), None) is False
    assert emitted(c) == []


def test_an_erasure_needs_a_reason(event, given, ctx, refused):
    c = given(Customer, event(CustomerRegistered, CID, **registered()))
    with refused(InvalidValue, "reason", c):
        c.erase_personal_data(ctx(), None)


def test_a_recorded_erasure_closes_the_record_when_replayed(event, given, ctx):
    c = given(Customer, event(CustomerRegistered, CID, **registered()),
              event(CustomerPersonalDataErased, CID, request_reference=None))
    assert (c.personal_data_erased, c.erasure_recorded) == (True, True)
    with pytest.raises(PersonalDataErased):
        c.tag(ctx(), "vip")
