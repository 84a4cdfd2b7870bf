"""The accepted-text rule (commands.base): which characters, where a model names a refusal,
and the places outside models that take text from a caller (token subjects, the CLI)."""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from commands import HANDLERS
from commands import customer as cc
from commands import identity as ci
from commands.base import CheckedInput, Command, check_text, refused_text, text_problem
from crm.cli import app as cli
from api.auth import JwtSettings, TokenIssuer

REFUSED = ["\x00", "\x01", "\x08", "\x0b", "\x0c", "\x0e", "\x1b", "\x1f", "\ud800", "\udbff", "\udc00", "\udfff"]
ACCEPTED = ["\t", "\n", "\r", " ", "\x7f", "\x85", "\u200e", "\u202e", "🎉", "日本", "\ufeff", "\uffff",
            "\U0010ffff", "مرحبا"]


@pytest.mark.parametrize("ch", REFUSED)
def test_refused_characters(ch: str) -> None:
    assert text_problem(f"a{ch}b") is not None
    with pytest.raises(ValueError):
        check_text(ch)


@pytest.mark.parametrize("ch", ACCEPTED)
def test_accepted_characters(ch: str) -> None:
    assert text_problem(f"a{ch}b") is None
    assert check_text(ch) == ch


def test_the_problem_names_the_character_and_where_it_is() -> None:
    assert text_problem("x\x00") == "must not hold the control character U+0000 (at character 1)"
    assert text_problem("\ud800") == "must not hold a lone surrogate U+D800 (at character 0)"
    found = list(refused_text({"a": ["ok", {"b\x01": 1}], "c": ("\ud800",), "d": cc.ContactIn.model_construct(
        kind="address", value="x\x02")}))
    assert [(loc, value) for loc, _, value in found] == [
        (("a", 1, "b\x01"), "b\x01"), (("c", 0), "\ud800"), (("d", "value"), "x\x02")]


def test_every_command_is_checked_and_refusals_name_the_field_at_any_depth() -> None:
    assert all(issubclass(c, Command) and issubclass(c, CheckedInput) for c in HANDLERS)
    cases = [
        (cc.RegisterCustomer, {"kind": "person", "name": "Bad\x00Name"}, ("name",)),
        (cc.RegisterCustomer, {"kind": "person", "name": "Ada", "contacts": [
            {"kind": "address", "value": "ok"}, {"kind": "address", "value": "\x1b[2J"}]}, ("contacts", 1, "value")),
        (cc.SetPreferences, {"preferences": {"news\x00": "weekly"}}, ("preferences", "news\x00")),
        (cc.SetPreferences, {"preferences": {"news": "week\x00ly"}}, ("preferences", "news")),
        (cc.RecordPurchase, {"order_id": "o", "amount": 1, "currency": "EUR", "lines": [
            {"sku": "s", "description": "\ud800", "quantity": 1, "unit_price": 1}]}, ("lines", 0, "description")),
        (ci.CreateUser, {"username": "eve", "password": "long enough\x00pass", "role": "analyst"}, ("password",)),
        (ci.ChangePassword, {"password": "long enough password", "current_password": "\x00"},
         ("current_password",)),
        (cc.EraseCustomerPersonalData, {"reason": "GDPR", "request_reference": "T\x07"}, ("request_reference",)),
        (cc.TagCustomer, {"tag": "vip", "reason": "a\x00"}, ("reason",)),
    ]
    for cls, data, loc in cases:
        with pytest.raises(ValidationError) as info:
            cls.model_validate(data)
        errors = info.value.errors()
        assert [e["loc"] for e in errors] == [loc], (cls.__name__, errors)
        assert errors[0]["type"] == "text"
    # tab, line ends and everything else stay as sent
    assert cc.RegisterCustomer(kind="person", name="Ada\tKing\r\n🎉 日本").name == "Ada\tKing\r\n🎉 日本"


def test_a_token_subject_or_team_that_is_not_accepted_text_is_never_issued_nor_accepted() -> None:
    import jwt
    from fastapi import HTTPException

    settings = JwtSettings(secret="s" * 32, issuer="crm", audience="crm-api")
    tokens = TokenIssuer(settings)
    with pytest.raises(ValueError, match="user id"):
        tokens.issue("rep\x00", "sales_rep")
    with pytest.raises(ValueError, match="team id"):
        tokens.issue("rep", "manager", team_id="\ud800")
    assert tokens.verify(tokens.issue("rep 日本", "sales_rep")).id == "rep 日本"
    for claims in ({"sub": "rep\x00"}, {"sub": "rep", "team": "t\x1f"}):
        forged_by_another_issuer_of_ours = jwt.encode(
            {"role": "manager", "iss": "crm", "aud": "crm-api", "exp": 4_000_000_000, **claims},
            settings.signing_key(), algorithm="HS256")
        with pytest.raises(HTTPException) as info:
            tokens.verify(forged_by_another_issuer_of_ours)
        assert info.value.status_code == 401


def test_the_command_line_refuses_text_before_it_touches_anything(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    # no database is set: the refusals come before the CLI builds the system
    monkeypatch.setenv("CRM_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("CRM_JWT_SECRET", "j" * 32)
    monkeypatch.setenv("CRM_DATA_DIR", str(tmp_path))
    runner = CliRunner()
    customer = str(uuid4())
    for args, word in ((["--reason", "GDPR\x00"], "reason"), (["--reason", "GDPR", "--reference", "\x01"],
                                                               "request_reference"),
                       (["--reason", "GDPR", "--actor", "x\x00"], "--actor"),
                       (["--reason", "GDPR", "--idempotency-key", "k\x00"], "--idempotency-key")):
        out = runner.invoke(cli, ["customers", "erase", customer, *args])
        assert out.exit_code == 2, out.output
        assert word in out.output and "U+00" in out.output, out.output
    out = runner.invoke(cli, ["token", "--user", "a\x00b", "--role", "admin"])
    assert out.exit_code == 2 and "user id" in out.output, out.output
