"""Device key pairs, pairwise round keys and authenticated encryption of shares.

Each device holds one long-term X25519 key pair. Two devices agree on a shared secret
once; every round key is HKDF-SHA256 of that secret with the run, the round, the
ordered pair of devices and the key's purpose in ``info``. Keys of different rounds
or purposes are therefore independent: revealing one round's mask seed (which the
protocol does when a neighbour drops out) reveals nothing about other rounds, the
other purpose, or the long-term private key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: Bytes of a mask seed and of a share-encryption key (256 bits).
SEED_BYTES = 32
PUBLIC_KEY_BYTES = 32
NONCE_BYTES = 12
Purpose = Literal["mask", "share-encryption"]


class ShareDecryptionError(ValueError):
    """An encrypted share failed authentication: forged, replayed from another round or misaddressed."""


@dataclass(frozen=True)
class DeviceKeys:
    """A device's long-term X25519 key pair (the private half never leaves the device)."""

    private_key: bytes

    @classmethod
    def generate(cls) -> DeviceKeys:
        return cls(X25519PrivateKey.generate().private_bytes_raw())

    @property
    def public_key(self) -> bytes:
        return X25519PrivateKey.from_private_bytes(self.private_key).public_key().public_bytes_raw()

    def agree(self, peer_public_key: bytes) -> bytes:
        """The X25519 shared secret with a peer (the same on both sides)."""
        if len(peer_public_key) != PUBLIC_KEY_BYTES:
            raise ValueError(f"an X25519 public key is {PUBLIC_KEY_BYTES} bytes, got {len(peer_public_key)}")
        private = X25519PrivateKey.from_private_bytes(self.private_key)
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public_key))


def round_key(shared_secret: bytes, purpose: Purpose, run_id: str, server_round: int, node_a: int,
              node_b: int) -> bytes:
    """A 256-bit key for one purpose, one round and one unordered pair of devices."""
    low, high = sorted((node_a, node_b))
    info = f"fedrec secure aggregation|{purpose}|{run_id}|{server_round}|{low}|{high}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=None, info=info).derive(shared_secret)


def share_context(run_id: str, server_round: int, sender: int, receiver: int) -> bytes:
    """Associated data that binds an encrypted share to its run, round, sender and receiver."""
    return f"fedrec share|{run_id}|{server_round}|{sender}->{receiver}".encode()


def encrypt_share(key: bytes, plaintext: bytes, context: bytes) -> bytes:
    """AES-256-GCM with a random nonce; the nonce leads the ciphertext."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, context)


def decrypt_share(key: bytes, ciphertext: bytes, context: bytes) -> bytes:
    """Opens :func:`encrypt_share`'s output; any change to it or to ``context`` raises."""
    try:
        return AESGCM(key).decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], context)
    except (InvalidTag, ValueError):
        raise ShareDecryptionError(f"share for {context.decode(errors='replace')!r} failed authentication "
                                   "(forged, replayed or misaddressed)") from None
