"""Backup bundles: everything a new machine needs to bring a CRM back, in one file.

A bundle is a tar file with

- ``manifest.json``: when it was taken, the tables, the log's head, the erasure ledger's
  size, and which keys the data needs (by id: the master key's is a hash of it, the
  audit signing key's is its public key) and whether they are inside;
- ``database.dump``: the ``pg_dump`` archive of ``crm.backup.backup``;
- ``erasure-ledger.jsonl``: the erasure ledger as it was when the bundle was taken;
- ``keys.enc`` (only with a passphrase): the master key, the audit signing key and the
  JWT secret, encrypted with AES-256-GCM under a key derived from the passphrase with
  scrypt.

Nothing here reads the environment: the command line passes the settings' values in.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

FORMAT = "crm-backup-bundle"
VERSION = 1
MANIFEST = "manifest.json"
DUMP = "database.dump"
LEDGER = "erasure-ledger.jsonl"
KEYS = "keys.enc"
_AAD = b"crm backup bundle keys v1"
_SCRYPT = {"n": 2**15, "r": 8, "p": 1}


class BundleError(RuntimeError):
    """The bundle cannot be written or read, or something it needs is missing."""


def master_key_id(key: bytes) -> str:
    return hashlib.sha256(b"crm master key id|" + key).hexdigest()[:16]


def secret_id(secret: bytes) -> str:
    return hashlib.sha256(b"crm jwt secret id|" + secret).hexdigest()[:16]


@dataclass
class Keys:
    """The secrets the data depends on: the master key wraps every customer's key; the
    audit signing key signed the chain's checkpoints; the JWT secret signs tokens (a
    new one only signs everybody out)."""

    master_key: bytes
    audit_signing_seed: bytes
    audit_public_key: str
    jwt_secret: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"master_key_id": master_key_id(self.master_key),
                "audit_public_key": self.audit_public_key,
                "jwt_secret_id": secret_id(self.jwt_secret.encode()) if self.jwt_secret else None}


def is_bundle(path: Path) -> bool:
    try:
        with tarfile.open(path, "r:") as tar:
            return MANIFEST in tar.getnames()
    except (OSError, tarfile.TarError):
        return False


def ledger_lines(path: Path | None) -> list[str]:
    """The ledger's entries (one JSON object a line); none when there is no file."""
    if path is None or not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if line.strip()]


def _encrypt(keys: Keys, passphrase: str) -> bytes:
    salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
    kek = Scrypt(salt=salt, length=32, **_SCRYPT).derive(passphrase.encode())
    plain = json.dumps({"master_key": keys.master_key.hex(),
                        "audit_signing_key": keys.audit_signing_seed.hex(),
                        "jwt_secret": keys.jwt_secret}).encode()
    return json.dumps({"kdf": "scrypt", **_SCRYPT, "salt": salt.hex(), "cipher": "AES-256-GCM",
                       "nonce": nonce.hex(),
                       "ciphertext": AESGCM(kek).encrypt(nonce, plain, _AAD).hex()}).encode()


def _decrypt(blob: bytes, passphrase: str) -> dict[str, Any]:
    doc = json.loads(blob)
    kek = Scrypt(salt=bytes.fromhex(doc["salt"]), length=32, n=doc["n"], r=doc["r"],
                 p=doc["p"]).derive(passphrase.encode())
    try:
        plain = AESGCM(kek).decrypt(bytes.fromhex(doc["nonce"]), bytes.fromhex(doc["ciphertext"]), _AAD)
    except InvalidTag:
        raise BundleError("the passphrase does not open the keys of this bundle (keys.enc)") from None
    result: dict[str, Any] = json.loads(plain)
    return result


def write_bundle(out: Path, dump: Path, tables: list[str], head: int, ledger: Path | None,
                 keys: Keys, passphrase: str | None) -> dict[str, Any]:
    """Write the bundle (atomically); its manifest."""
    lines = ledger_lines(ledger)
    manifest: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "created_at": datetime.now(UTC).isoformat(),
        "tables": tables, "event_log_head": head,
        "erasure_ledger": {"entries": len(lines)},
        "keys": {"included": passphrase is not None, **keys.describe()},
    }
    members: list[tuple[str, bytes | Path]] = [
        (MANIFEST, json.dumps(manifest, indent=2).encode()), (DUMP, dump),
        (LEDGER, "".join(line + "\n" for line in lines).encode())]
    if passphrase is not None:
        members.append((KEYS, _encrypt(keys, passphrase)))
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w:") as tar:
        for name, content in members:
            if isinstance(content, Path):
                tar.add(content, arcname=name)
            else:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(content), 0o600, int(datetime.now(UTC).timestamp())
                tar.addfile(info, io.BytesIO(content))
    os.chmod(tmp, 0o600)
    tmp.replace(out)
    return manifest


@dataclass
class Bundle:
    """A bundle opened for restoring."""

    path: Path
    manifest: dict[str, Any]
    ledger: list[str]
    has_keys: bool

    @classmethod
    def open(cls, path: Path) -> Bundle:
        try:
            with tarfile.open(path, "r:") as tar:
                names = tar.getnames()
                for needed in (MANIFEST, DUMP, LEDGER):
                    if needed not in names:
                        raise BundleError(f"{path} is not a complete backup bundle: no {needed} in it")
                manifest = json.loads(_read(tar, MANIFEST))
                ledger = [line for line in _read(tar, LEDGER).decode().splitlines() if line.strip()]
        except (OSError, tarfile.TarError, ValueError) as e:
            raise BundleError(f"cannot read the backup bundle {path}: {e}") from None
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise BundleError(f"{path}: not a backup bundle of this version ({manifest.get('format')} "
                              f"{manifest.get('version')})")
        return cls(path, manifest, ledger, KEYS in names)

    def extract_dump(self, directory: Path) -> Path:
        target = directory / DUMP
        with tarfile.open(self.path, "r:") as tar, target.open("wb") as out:
            source = tar.extractfile(DUMP)
            assert source is not None
            while chunk := source.read(1 << 20):
                out.write(chunk)
        return target

    def keys(self, passphrase: str) -> dict[str, Any]:
        with tarfile.open(self.path, "r:") as tar:
            return _decrypt(_read(tar, KEYS), passphrase)


def _read(tar: tarfile.TarFile, name: str) -> bytes:
    member = tar.extractfile(name)
    if member is None:
        raise BundleError(f"{name} in the bundle is not a file")
    return member.read()


def ledger_of(path: Path) -> list[str]:
    """The entries of a ledger file, or of the ledger inside a bundle."""
    if not path.exists():
        raise BundleError(f"no erasure ledger or bundle at {path}")
    if is_bundle(path):
        return Bundle.open(path).ledger
    lines = ledger_lines(path)
    for line in lines:
        try:
            UUID(json.loads(line)["customer_id"])
        except (ValueError, KeyError, TypeError):
            raise BundleError(f"{path} is neither a backup bundle nor an erasure ledger "
                              f"(a line without a customer_id: {line[:80]!r})") from None
    return lines


def merge_ledgers(target: Path, *sources: list[str]) -> int:
    """Write every entry of ``sources`` not yet in the ledger at ``target`` (by customer)
    to it, durably; how many customers it lists then."""
    existing = ledger_lines(target)
    seen = {json.loads(line)["customer_id"] for line in existing}
    added = []
    for lines in sources:
        for line in lines:
            customer = json.loads(line)["customer_id"]
            if customer not in seen:
                seen.add(customer)
                added.append(line)
    if added:
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("a") as f:
            f.write("".join(line + "\n" for line in added))
            f.flush()
            os.fsync(f.fileno())
    return len(seen)
