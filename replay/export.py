"""Audit exports an auditor can check offline, with nothing but the public key.

An export is two files:

* ``events.jsonl``: one line per event about the customer (the timeline's entry: who,
  both times, why, the data and the field-level change), each with its stored form
  (topic and state bytes, personal data still sealed), its chain link and the link
  before it, so the link can be recomputed from the line alone;
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

from events.chain import link_hash
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
            link, previous = chain[position]
            lines.append(json.dumps({
                "position": position,
                "hash": link.hex(),
                "previous_hash": previous.hex(),
                "stored": {"originator_id": str(originator_id), "originator_version": version,
                           "topic": topic, "state": _b64(state)},
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
            "signed_at": latest[-1].signed_at, "key_id": latest[-1].key_id,
            "signature": _b64(latest[-1].signature)},
        "key_id": key_id(public),
        "public_key": public_raw(public).hex(),
    }
    manifest["signature"] = _b64(key.sign(_canonical(manifest)))
    return ExportFiles(events, manifest)


def _links(replayer: Replayer, wanted: list[int]) -> dict[int, tuple[bytes, bytes]]:
    """(link, link before it) of each position; the one before may be any event's."""
    with replayer.connect() as conn:
        rows = conn.cursor(row_factory=tuple_row).execute(
            f"SELECT c.notification_id, c.hash,"
            f" (SELECT p.hash FROM {CHAIN_TABLE} p WHERE p.notification_id < c.notification_id"
            f"  ORDER BY p.notification_id DESC LIMIT 1)"
            f" FROM {CHAIN_TABLE} c WHERE c.notification_id = ANY(%s)", (wanted,)).fetchall()
    return {int(r[0]): (bytes(r[1]), bytes(r[2]) if r[2] is not None else bytes(32)) for r in rows}


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
                                 stored["topic"], base64.b64decode(stored["state"]))
        except (ValueError, KeyError, TypeError) as e:
            problems.append(f"line {i}: unreadable: {e}")
            continue
        position = int(line["position"])
        if computed.hex() != line["hash"]:
            problems.append(f"line {i} (position {position}): its stored form does not give its link")
        if i <= len(links) and links[i - 1] != [position, line["hash"]]:
            problems.append(f"line {i} (position {position}): not the link the manifest lists")
        if position <= last:
            problems.append(f"line {i} (position {position}): out of log order")
        last = position
    return problems
