"""Ed25519 signatures over model bundles: a device loads only a model its operator signed.

A bundle's sha256 digests catch accidents; whoever can rewrite ``parameters.npz`` can rewrite
its digest too. The signature closes that: ``fedrec deploy certs`` makes the deployment's
bundle-signing key pair (``bundle-signing.key``, kept by whoever publishes models;
``bundle-signing.pub``, pinned in every app), the server signs the manifest (which holds every
file's sha256) when it writes a bundle, and a device that pins the public key refuses a
bundle that is unsigned, signed by another key, or changed after signing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from recsys_core.audit.hash_chain import canonical_json
from recsys_core.errors import FedrecError

#: The manifest key holding the signature: ``{"algorithm", "public_key", "value"}`` (hex).
SIGNATURE_KEY = "signature"
ALGORITHM = "ed25519"


class SigningKeyError(FedrecError):
    """A signing or public key file that cannot be used."""


def signed_body(manifest: dict[str, Any], excluded: tuple[str, ...]) -> bytes:
    """What the signature covers: the manifest without the signature and the ``excluded`` keys, canonical JSON."""
    return canonical_json({key: value for key, value in manifest.items()
                           if key != SIGNATURE_KEY and key not in excluded})


def sign(body: bytes, key: Ed25519PrivateKey) -> dict[str, str]:
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"algorithm": ALGORITHM, "public_key": public.hex(), "value": key.sign(body).hex()}


def signature_problem(body: bytes, signature: Any, trusted: list[bytes]) -> str | None:
    """Why ``signature`` does not vouch for ``body`` under one of the ``trusted`` raw public keys, or None."""
    if not isinstance(signature, dict):
        return "it is not signed"
    try:
        public = bytes.fromhex(str(signature.get("public_key", "")))
        value = bytes.fromhex(str(signature.get("value", "")))
    except ValueError:
        return "its signature is malformed"
    if signature.get("algorithm") != ALGORITHM:
        return f"its signature uses {signature.get('algorithm')!r}, not {ALGORITHM}"
    if public not in trusted:
        return f"it is signed by key {public.hex()[:16]}…, which this device does not trust"
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(value, body)
    except (InvalidSignature, ValueError):
        return "its signature does not match its content (changed after signing, or forged)"
    return None


def generate_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_key_text(key: Ed25519PrivateKey) -> str:
    """The public key as a file holds it: 64 hex digits and a newline."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex() + "\n"


def load_signing_key(path: str | Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise SigningKeyError(f"{path}: not a readable Ed25519 private key in PEM ({error})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path}: holds a {type(key).__name__}, not an Ed25519 bundle-signing key")
    return key


def load_public_key(path: str | Path, purpose: str = "bundle-signing") -> bytes:
    """A pinned Ed25519 public key file (``bundle-signing.pub``, ``device-authority.pub``): 32 raw bytes."""
    try:
        public = bytes.fromhex(Path(path).read_text(encoding="utf-8").strip())
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise SigningKeyError(f"{path}: not a {purpose} public key (64 hex digits): {error}") from None
    if len(public) != 32:
        raise SigningKeyError(f"{path}: holds {len(public)} bytes; an Ed25519 public key is 32")
    return public
