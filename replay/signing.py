"""Ed25519 keys of the audit: checkpoints and exports are signed, anyone with the public
key checks them."""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


def private_key_from_seed(seed: bytes) -> Ed25519PrivateKey:
    """The signing key from its 32-byte seed (as kept in settings or the data directory)."""
    if len(seed) != 32:
        raise ValueError("the audit signing key must be 32 bytes (64 hex digits)")
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def load_public_key(text: str) -> Ed25519PublicKey:
    """A public key from PEM or from 64 hex digits (its raw form)."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(text.encode())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("not an Ed25519 public key")
        return key
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))


def key_id(key: Ed25519PublicKey) -> str:
    """A short name of a public key: the first 8 bytes of its SHA-256, in hex."""
    return hashlib.sha256(public_raw(key)).hexdigest()[:16]
