"""Audit exports an auditor can check offline, with nothing but the public key.

An export is two files:

* ``events.jsonl``: one line per event about the customer (the timeline's entry: who,
  both times, why, the data and the field-level change), each with its stored form
  (topic and state bytes, personal data still sealed; for a version-2 link also the
  chain's columns it covers: subject, both times, actor, newest checkpoint), its chain
  link and the link before it, so the link can be recomputed from the line alone;
* ``manifest.json``: who exported what and when, the SHA-256 of ``events.jsonl``, every
  chain link in order, the chain head at export time and the latest signed checkpoint,
  all signed with the installation's Ed25519 key.

``verify_export`` recomputes every link from the stored form, checks the file digest,
the list of links and the signature: a changed byte anywhere is found.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from psycopg.rows import tuple_row

from events.chain import LINK_VERSION, LinkMeta, link_hash
from replay.audit import CHAIN_TABLE, chain_head, checkpoints
from replay.signing import key_id, public_raw
from replay.state import Replayer
from replay.timeline import TimelineQuery, entries, subject_rows

FORMAT = "crm-audit-export/1"
PAGE = 1000


@dataclass(frozen=True)
class ExportRequest:
    customer_id: UUID
    occurred_from: datetime | None
    occurred_to: datetime | None
    actor_id: str
    actor_role: str


@dataclass(frozen=True)
class ExportFiles:
    events: bytes
    manifest: dict[str, Any]

    @property
    def manifest_bytes(self) -> bytes:
        return json.dumps(self.manifest, indent=2, sort_keys=True).encode() + b"\n"

    def write(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "events.jsonl").write_bytes(self.events)
        (out / "manifest.json").write_bytes(self.manifest_bytes)


def _canonical(manifest: dict[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def export_customer(replayer: Replayer, key: Ed25519PrivateKey, req: ExportRequest,
                    *, now: datetime | None = None) -> ExportFiles:
    """Every event about the customer (business time in [from, to)), signed."""
    lines: list[bytes] = []
    links: list[list[Any]] = []
    after = 0
    while True:
        rows = subject_rows(replayer, req.customer_id, TimelineQuery(
            after=after, limit=PAGE, occurred_from=req.occurred_from, occurred_to=req.occurred_to))
        page = rows[:PAGE]
        if not page:
            break
        chain = _links(replayer, [r[0] for r in page])
        for row, entry in zip(page, entries(replayer, page), strict=True):
            position, originator_id, version, topic, state = row
            link, previous, covered = chain[position]
            stored: dict[str, Any] = {"originator_id": str(originator_id), "originator_version": version,
                                      "topic": topic, "state": _b64(state)}
            if covered is not None:
                stored["link"] = covered  # what a version-2 link covers beyond the event
            lines.append(json.dumps({
                "position": position,
                "hash": link.hex(),
                "previous_hash": previous.hex(),
                "stored": stored,
                "event": entry,
            }, sort_keys=True, separators=(",", ":")).encode() + b"\n")
            links.append([position, link.hex()])
        if len(rows) <= PAGE:
            break
        after = page[-1][0]
    events = b"".join(lines)
    head = chain_head(replayer.connect)
    latest = checkpoints(replayer.connect)
    public = key.public_key()
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "customer_id": str(req.customer_id),
        "from": req.occurred_from.isoformat() if req.occurred_from else None,
        "to": req.occurred_to.isoformat() if req.occurred_to else None,
        "exported_at": (now or datetime.now(UTC)).isoformat(),
        "exported_by": {"id": req.actor_id, "role": req.actor_role},
        "events": len(lines),
        "events_sha256": hashlib.sha256(events).hexdigest(),
        "links": links,
        "head": {"position": head[0], "hash": head[1].hex()} if head else None,
        "checkpoint": None if not latest else {
            "position": latest[-1].notification_id, "hash": latest[-1].hash.hex(),
            "signed_at": latest[-1].signed_at, "key_id": latest[-1].key_id, "seq": latest[-1].seq,
            "signature": _b64(latest[-1].signature)},
        "key_id": key_id(public),
        "public_key": public_raw(public).hex(),
    }
    manifest["signature"] = _b64(key.sign(_canonical(manifest)))
    return ExportFiles(events, manifest)


def _links(replayer: Replayer, wanted: list[int]) -> dict[int, tuple[bytes, bytes, dict[str, Any] | None]]:
    """(link, link before it, what a version-2 link covers beyond the event) of each
    position; the one before may be any event's."""
    with replayer.connect() as conn:
        rows = conn.cursor(row_factory=tuple_row).execute(
            f"SELECT c.notification_id, c.hash,"
            f" (SELECT p.hash FROM {CHAIN_TABLE} p WHERE p.notification_id < c.notification_id"
            f"  ORDER BY p.notification_id DESC LIMIT 1),"
            f" c.link_version, c.subject_id, c.occurred_at, c.recorded_at, c.actor_id, c.checkpoint_at"
            f" FROM {CHAIN_TABLE} c WHERE c.notification_id = ANY(%s)", (wanted,)).fetchall()
    return {int(r[0]): (bytes(r[1]), bytes(r[2]) if r[2] is not None else bytes(32),
                        _covered(r[4], r[5], r[6], r[7], int(r[8])) if int(r[3]) >= LINK_VERSION else None)
            for r in rows}


def _covered(subject: Any, occurred: datetime | None, recorded: datetime | None, actor: str | None,
             checkpoint_at: int) -> dict[str, Any]:
    """A version-2 link's columns as an export line carries them (times in UTC,
    microseconds: the instant the link covers)."""
    def when(t: datetime | None) -> str | None:
        return None if t is None else t.astimezone(UTC).isoformat(timespec="microseconds")

    return {"subject_id": None if subject is None else str(subject), "occurred_at": when(occurred),
            "recorded_at": when(recorded), "actor_id": actor, "checkpoint_at": checkpoint_at}


def _meta(link: dict[str, Any]) -> LinkMeta:
    def when(t: Any) -> datetime | None:
        return None if t is None else datetime.fromisoformat(t)

    subject = link.get("subject_id")
    return LinkMeta(None if subject is None else UUID(subject), when(link.get("occurred_at")),
                    when(link.get("recorded_at")), link.get("actor_id"), int(link["checkpoint_at"]))


# -- offline verification -----------------------------------------------------------------
def read_export(path: Path) -> tuple[bytes, bytes]:
    """(events.jsonl, manifest.json) from an export directory or a zip of one."""
    if path.is_dir():
        return (path / "events.jsonl").read_bytes(), (path / "manifest.json").read_bytes()
    with zipfile.ZipFile(path) as z:
        return z.read("events.jsonl"), z.read("manifest.json")


def verify_export(events: bytes, manifest_bytes: bytes, public_key: Ed25519PublicKey) -> list[str]:
    """What is wrong with an export (empty: it is intact and signed by this key)."""
    problems: list[str] = []
    try:
        manifest = json.loads(manifest_bytes)
        signature = base64.b64decode(manifest["signature"])
    except (ValueError, KeyError, TypeError) as e:
        return [f"the manifest is unreadable: {e}"]
    if manifest.get("format") != FORMAT:
        problems.append(f"unknown export format {manifest.get('format')!r}")
    try:
        public_key.verify(signature, _canonical(manifest))
    except InvalidSignature:
        problems.append("the manifest's signature does not verify with this public key")
    if hashlib.sha256(events).hexdigest() != manifest.get("events_sha256"):
        problems.append("events.jsonl is not the file the manifest was signed for")
    links = manifest.get("links") or []
    lines = events.splitlines()
    if len(lines) != manifest.get("events") or len(lines) != len(links):
        problems.append(f"{len(lines)} events, the manifest lists {manifest.get('events')}")
    last = 0
    for i, raw in enumerate(lines, start=1):
        try:
            line = json.loads(raw)
            stored = line["stored"]
            computed = link_hash(bytes.fromhex(line["previous_hash"]), int(line["position"]),
                                 UUID(stored["originator_id"]), int(stored["originator_version"]),
                                 stored["topic"], base64.b64decode(stored["state"]),
                                 _meta(stored["link"]) if "link" in stored else None)
        except (ValueError, KeyError, TypeError) as e:
            problems.append(f"line {i}: unreadable: {e}")
            continue
        position = int(line["position"])
        subject = (stored.get("link") or {}).get("subject_id", manifest.get("customer_id"))
        if subject != manifest.get("customer_id"):
            problems.append(f"line {i} (position {position}): its link is about another customer")
        if computed.hex() != line["hash"]:
            problems.append(f"line {i} (position {position}): its stored form does not give its link")
        if i <= len(links) and links[i - 1] != [position, line["hash"]]:
            problems.append(f"line {i} (position {position}): not the link the manifest lists")
        if position <= last:
            problems.append(f"line {i} (position {position}): out of log order")
        last = position
    return problems
