"""Authenticated device keys: a device authority certifies identity keys, devices endorse their agreement keys.

Without this, a device agrees pairwise secrets with whatever public keys the server
relays, so a server that substitutes its own keys learns every pairwise seed and every
share (issue 23's key substitution). The fix follows SecAgg's PKI (Bonawitz et al. 2017):

* The **device authority** is an Ed25519 key pair held by whoever enrols devices (the
  deployment's operator, ``fedrec deploy certs``; the simulation launcher, in process),
  never by the server. It *certifies* a device's Ed25519 **identity key**: a signature over
  the identity public key. Devices pin the authority's public key in their own configuration.
* The device *endorses* its X25519 agreement key with its identity key: a signature over the
  agreement key and the device's own node id. The server relays the endorsement with the key.
* Before agreeing on anything, a device checks every neighbour's certificate against the
  pinned authority and the endorsement against the node id the server named. A substituted
  key fails one of the two; re-using another device's endorsed key under a different node id
  fails the node id.

What this does not give: it does not stop a server that relays honest keys but tells devices
different stories about who survived (that is the consistency round's job), and a device whose
identity key leaks can be impersonated until the deployment stops trusting the authority.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from recsys_core.bundle_signing import load_public_key
from recsys_core.errors import FedrecError

IDENTITY_KEY_BYTES = 32
SIGNATURE_BYTES = 64
IDENTITY_FORMAT = 1
#: Domain separation: a certificate can never be read as an endorsement, nor either as a bundle signature.
CERTIFICATE_CONTEXT = b"fedrec device certificate|v1|"
ENDORSEMENT_CONTEXT = b"fedrec agreement key|v1|"


class KeyAuthenticationError(ValueError):
    """A neighbour's key is not vouched for by the pinned device authority; the device refuses the round."""


class IdentityError(FedrecError):
    """A device identity or authority file that cannot be used."""


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _raw_private(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is ``public_key``'s Ed25519 signature of ``message`` (malformed input: False)."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def endorsed_statement(node_id: int, agreement_key: bytes) -> bytes:
    """What an endorsement signs: the agreement key and the node id it is used under."""
    return ENDORSEMENT_CONTEXT + int(node_id).to_bytes(8, "big") + bytes(agreement_key)


@dataclass(frozen=True)
class KeyEndorsement:
    """What vouches for one device's agreement key: its certified identity key and its signature."""

    identity_key: bytes
    #: The authority's signature over the identity key.
    certificate: bytes
    #: The identity key's signature over :func:`endorsed_statement`.
    signature: bytes

    def __post_init__(self) -> None:
        for name, width in (("identity_key", IDENTITY_KEY_BYTES), ("certificate", SIGNATURE_BYTES),
                            ("signature", SIGNATURE_BYTES)):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != width:
                raise KeyAuthenticationError(f"endorsement field {name!r} must be {width} bytes")

    def to_wire(self) -> dict[str, bytes]:
        return {"identity-key": self.identity_key, "identity-certificate": self.certificate,
                "key-signature": self.signature}

    @classmethod
    def from_wire(cls, values: Mapping[str, Any]) -> KeyEndorsement | None:
        """The endorsement in a registration, None when the device sent none; malformed fields raise."""
        if "identity-key" not in values:
            return None
        try:
            return cls(bytes(values["identity-key"]), bytes(values["identity-certificate"]),
                       bytes(values["key-signature"]))
        except (KeyError, TypeError) as missing:
            raise KeyAuthenticationError(f"endorsement lacks or garbles {missing}") from None


def endorsement_problem(authority: bytes, node_id: int, agreement_key: bytes,
                        endorsement: KeyEndorsement | None) -> str | None:
    """Why ``endorsement`` does not vouch for ``agreement_key`` at ``node_id`` under ``authority``, or None."""
    if endorsement is None:
        return "it carries no endorsement (the device has no certified identity)"
    if not verify_signature(authority, endorsement.certificate, CERTIFICATE_CONTEXT + endorsement.identity_key):
        return "its identity key is not certified by the pinned device authority"
    statement = endorsed_statement(node_id, agreement_key)
    if not verify_signature(endorsement.identity_key, endorsement.signature, statement):
        return f"its key is not the one its identity endorsed for node {node_id} (substituted or moved)"
    return None


def authenticate_neighbours(authority: bytes, own_identity_key: bytes, neighbour_keys: Mapping[int, bytes],
                            endorsements: Mapping[int, KeyEndorsement]) -> None:
    """Raises :class:`KeyAuthenticationError` unless every neighbour's key is endorsed by a distinct certified device.

    Distinct identities: one device shown under two node ids would count twice towards the
    threshold; a device shown its own identity as a neighbour is being fooled.
    """
    seen: dict[bytes, int] = {}
    for node in sorted(neighbour_keys):
        endorsement = endorsements.get(node)
        problem = endorsement_problem(authority, node, neighbour_keys[node], endorsement)
        if problem is not None:
            raise KeyAuthenticationError(f"neighbour {node}: {problem}; refusing to mask with it")
        assert endorsement is not None
        if endorsement.identity_key == own_identity_key:
            raise KeyAuthenticationError(f"neighbour {node} carries this device's own identity; refusing the round")
        if endorsement.identity_key in seen:
            raise KeyAuthenticationError(f"neighbours {seen[endorsement.identity_key]} and {node} are the same "
                                         "certified device; refusing the round")
        seen[endorsement.identity_key] = node


@dataclass(frozen=True)
class DeviceIdentity:
    """A device's certified Ed25519 identity: the private key stays on the device."""

    private_key: bytes
    certificate: bytes

    @property
    def public_key(self) -> bytes:
        return _raw_public(Ed25519PrivateKey.from_private_bytes(self.private_key))

    def endorse(self, node_id: int, agreement_key: bytes) -> KeyEndorsement:
        return KeyEndorsement(self.public_key, self.certificate, self.sign(endorsed_statement(node_id, agreement_key)))

    def sign(self, statement: bytes) -> bytes:
        """The identity key's Ed25519 signature; callers prefix every statement with its own context."""
        return Ed25519PrivateKey.from_private_bytes(self.private_key).sign(statement)

    def write(self, path: str | Path) -> None:
        """Writes the identity as JSON, readable by its owner only (mode 0600)."""
        body = json.dumps({"format": IDENTITY_FORMAT, "identity_key": self.private_key.hex(),
                           "certificate": self.certificate.hex()}).encode()
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(body)

    @classmethod
    def read(cls, path: str | Path, authority: bytes) -> DeviceIdentity:
        """Reads an identity and checks that ``authority`` certified it; one :class:`IdentityError` otherwise."""
        try:
            values = json.loads(Path(path).read_text(encoding="utf-8"))
            identity = cls(bytes.fromhex(values["identity_key"]), bytes.fromhex(values["certificate"]))
            public = identity.public_key
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise IdentityError(f"{path}: not a readable fedrec device identity ({type(error).__name__}: {error}); "
                                "issue a new one with the deployment's device authority") from None
        if not verify_signature(authority, identity.certificate, CERTIFICATE_CONTEXT + public):
            raise IdentityError(f"{path}: this identity is not certified by the pinned device authority "
                                f"{authority.hex()[:16]}…; issue it again with that authority")
        return identity


@dataclass(frozen=True)
class DeviceAuthority:
    """The key that enrols devices. Whoever holds it can make devices; the server must not."""

    private_key: bytes

    @classmethod
    def generate(cls) -> DeviceAuthority:
        return cls(_raw_private(Ed25519PrivateKey.generate()))

    @property
    def public_key(self) -> bytes:
        return _raw_public(Ed25519PrivateKey.from_private_bytes(self.private_key))

    def certify(self, identity_key: bytes) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(self.private_key).sign(CERTIFICATE_CONTEXT + identity_key)

    def issue(self) -> DeviceIdentity:
        """A new device identity (fresh key from the OS generator), certified by this authority."""
        key = Ed25519PrivateKey.generate()
        return DeviceIdentity(_raw_private(key), self.certify(_raw_public(key)))


def read_authority_key(path: str | Path) -> bytes:
    """A pinned device-authority public key file (``device-authority.pub``): 64 hex digits."""
    return load_public_key(path, purpose="device-authority")


def write_authority_key(path: str | Path, authority: bytes) -> None:
    Path(path).write_text(authority.hex() + "\n", encoding="ascii")


#: A simulation launcher enrols its devices here, under the devices' state folder.
SIMULATED_IDENTITIES = "identities"
AUTHORITY_FILE = "authority.pub"


def simulated_identity_path(folder: str | Path, partition: int) -> Path:
    return Path(folder) / f"partition-{partition}.identity"


def enrol_simulated_devices(folder: str | Path, partitions: int) -> bytes:
    """The in-process authority of a simulation: certifies one identity per partition, returns its public key.

    The authority's private key is used here and forgotten: nobody, the server included, can
    enrol another device later. A folder already enrolled (a resumed run) is kept as it is.
    """
    folder = Path(folder)
    if (folder / AUTHORITY_FILE).exists():
        return read_authority_key(folder / AUTHORITY_FILE)
    folder.mkdir(parents=True, exist_ok=True)
    authority = DeviceAuthority.generate()
    for partition in range(partitions):
        authority.issue().write(simulated_identity_path(folder, partition))
    # Written last: a folder with the authority file is completely enrolled.
    write_authority_key(folder / AUTHORITY_FILE, authority.public_key)
    return authority.public_key
