"""Audit exports: written by `crm audit export` and the API, checked offline by
`crm audit verify-export` with only the public key; any change to them is found."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from crm.cli import app as cli
from replay.export import verify_export
from replay.signing import load_public_key, private_key_from_seed, public_key_pem
from replay.timeline import TimelineQuery, timeline
from tests.e2e.test_http import serving
from tests.integration.test_audit_chain import _cli_env
from tests.integration.test_replay import Story, _related_story

pytestmark = pytest.mark.postgres


def _exported(system: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *extra: str) -> tuple[Path, Path, Any]:
    story = Story(system)
    cid, _ = _related_story(story)
    _cli_env(system, monkeypatch)
    out = tmp_path / "export"
    result = CliRunner().invoke(cli, ["audit", "export", "--customer", str(cid), "--actor", "aud-1",
                                      *extra, str(out)])
    assert result.exit_code == 0, result.output
    key = tmp_path / "public.pem"
    result = CliRunner().invoke(cli, ["audit", "public-key"])
    assert result.exit_code == 0, result.output
    key.write_text(result.output)
    return out, key, cid


def _verify(out: Path, key: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    # Offline: the database named in the settings does not even exist.
    monkeypatch.setenv("CRM_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    return CliRunner().invoke(cli, ["audit", "verify-export", str(out), "--public-key", str(key)])


def test_an_export_verifies_offline_and_is_recorded_as_an_event(system: Any, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    out, key, cid = _exported(system, tmp_path, monkeypatch)
    lines = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["customer_id"] == str(cid) and manifest["events"] == len(lines) == 9
    assert manifest["exported_by"] == {"id": "aud-1", "role": "auditor"}
    assert [line["event"]["type"] for line in lines][-1] == "CustomerDetailsChanged"
    assert lines[-1]["event"]["changes"] == [{"field": "name", "before": "Mia Berg", "after": "Mia Berg-Lund"}]
    assert lines[-1]["event"]["actor_id"] == "rep-1" and lines[-1]["event"]["reason"] == "married"
    assert "Mia" not in base64.b64decode(lines[0]["stored"]["state"]).decode()  # sealed as stored

    result = _verify(out, key, monkeypatch)
    assert result.exit_code == 0, result.output
    assert "intact" in result.output

    # The export itself is in the customer's timeline now: who exported what, when.
    last = timeline(Story(system).replayer(), cid, TimelineQuery(types=("AuditExported",))).items
    assert len(last) == 1
    assert last[0]["actor_id"] == "aud-1" and last[0]["actor_role"] == "auditor"
    assert last[0]["data"]["events"] == 9
    assert last[0]["data"]["manifest_sha256"] == hashlib.sha256(
        (out / "manifest.json").read_bytes()).hexdigest()


@pytest.mark.parametrize("change", ["event data", "stored byte", "dropped line", "manifest count",
                                    "swapped lines", "link actor"])
def test_a_modified_export_is_rejected(system: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       change: str) -> None:
    out, key, _ = _exported(system, tmp_path, monkeypatch)
    events_path, manifest_path = out / "events.jsonl", out / "manifest.json"
    lines = events_path.read_text().splitlines(keepends=True)
    if change == "event data":
        events_path.write_text("".join(lines).replace('"reason":"married"', '"reason":"typo"'))
    elif change == "stored byte":
        line = json.loads(lines[3])
        state = bytearray(base64.b64decode(line["stored"]["state"]))
        state[10] ^= 1
        line["stored"]["state"] = base64.b64encode(bytes(state)).decode()
        lines[3] = json.dumps(line, sort_keys=True, separators=(",", ":")) + "\n"
        events_path.write_text("".join(lines))
    elif change == "link actor":
        line = json.loads(lines[3])
        assert line["stored"]["link"]["actor_id"] == line["event"]["actor_id"]  # a version-2 link's column
        line["stored"]["link"]["actor_id"] = "mallory"
        lines[3] = json.dumps(line, sort_keys=True, separators=(",", ":")) + "\n"
        events_path.write_text("".join(lines))
        problems = verify_export(events_path.read_bytes(), manifest_path.read_bytes(),
                                 load_public_key(key.read_text()))
        assert "line 4 (position" in " ".join(problems) and "does not give its link" in " ".join(problems)
    elif change == "dropped line":
        events_path.write_text("".join(lines[:4] + lines[5:]))
    elif change == "manifest count":
        manifest = json.loads(manifest_path.read_text())
        manifest["events"] = 8
        manifest_path.write_text(json.dumps(manifest))
    else:
        lines[2], lines[3] = lines[3], lines[2]
        events_path.write_text("".join(lines))
    result = _verify(out, key, monkeypatch)
    assert result.exit_code == 1, result.output
    assert "NOT intact" in result.output


def test_an_export_signed_by_another_key_is_rejected(system: Any, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    out, _, _ = _exported(system, tmp_path, monkeypatch, "--from", "2026-01-11T00:00:00Z",
                          "--to", "2026-01-14T00:00:00Z")
    manifest = json.loads((out / "manifest.json").read_text())
    # Business time in [Jan 11, Jan 14): the opportunity and the service request (the call
    # logged on Jan 12 took place on Jan 9).
    assert [line["event"]["type"] for line in map(json.loads, (out / "events.jsonl").read_text().splitlines())] \
        == ["OpportunityOpened", "ServiceRequestOpened"]
    assert manifest["events"] == 2
    other = tmp_path / "other.pem"
    other.write_text(public_key_pem(private_key_from_seed(b"\x01" * 32).public_key()))
    result = _verify(out, other, monkeypatch)
    assert result.exit_code == 1 and "signature" in result.output


def test_the_api_gives_auditors_a_signed_export(system: Any) -> None:
    story = Story(system)
    cid, _ = _related_story(story)
    with serving(system.http_app()) as base:
        with httpx.Client(base_url=base, timeout=20) as client:
            token = system.tokens.issue("aud-2", "auditor")
            r = client.get(f"/api/v1/customers/{cid}/audit-export",
                           params={"to": "2026-01-13T00:00:00Z"},
                           headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text
            assert r.headers["content-type"] == "application/zip"
            r2 = client.get(f"/api/v1/customers/{cid}/audit-export", params={"to": "later"},
                            headers={"Authorization": f"Bearer {token}"})
            assert r2.status_code == 422 and r2.json()["field"] == "to"
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        events, manifest = z.read("events.jsonl"), z.read("manifest.json")
    public = system.audit_key.public_key()
    assert verify_export(events, manifest, public) == []
    assert json.loads(manifest)["events"] == 3
    assert json.loads(manifest)["exported_by"] == {"id": "aud-2", "role": "auditor"}
    assert verify_export(events.replace(b"Licence", b"Licenze"), manifest, public) != []


def test_the_timeline_command(system: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    cid, _ = _related_story(Story(system))
    _cli_env(system, monkeypatch)
    result = CliRunner().invoke(cli, ["replay", "timeline", str(cid), "--json", "--type",
                                      "CustomerDetailsChanged"])
    assert result.exit_code == 0, result.output
    [line] = [json.loads(x) for x in result.output.splitlines()]
    assert line["changes"] == [{"field": "name", "before": "Mia Berg", "after": "Mia Berg-Lund"}]
    text = CliRunner().invoke(cli, ["replay", "timeline", str(cid), "--limit", "3"])
    assert text.exit_code == 0 and text.output.count("\n#") + text.output.startswith("#") == 3
    assert "CustomerRegistered" in text.output and "name: null -> \"Mia Berg\"" in text.output
    bad = CliRunner().invoke(cli, ["replay", "timeline", str(cid), "--type", "Nope"])
    assert bad.exit_code == 2
