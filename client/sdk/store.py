"""The device's encrypted local store: one file, AES-256-GCM, written atomically.

What the store holds is the app's business (:class:`~client.sdk.device.Device` keeps
the user's interactions, private parameters, privacy accountant and pending updates);
this module keeps a dict of numpy arrays safe at rest.

File layout::

    b"FEDRECSTORE" version(1 byte) header_length(4 bytes, big endian) header(JSON) nonce(12) ciphertext

The header names the key source (``scrypt`` with its salt and cost, or ``app-key``), a
key check value, the store's identity (a random id made at creation and the identity the
app gives, say its user or install id) and a write counter; the whole header is
authenticated as AES-GCM's associated data. So:

* a wrong passphrase or key is reported as such (the check value differs), never as
  garbage data;
* a flipped byte anywhere else fails authentication and is reported as tampering or
  corruption, naming the file;
* a write goes to a temporary file in the same folder, is fsynced and renamed over the
  old one, so a process killed mid-write leaves the previous version intact;
* another user's store, copied over this one under a shared app key, is refused: its
  identity differs from the one the app opens it with;
* an older copy of the store (a rollback, which would restore a spent privacy budget) is
  refused when its write counter is below the last one this store object saw, or below
  ``min_counter``. Across restarts that needs the app to keep :attr:`EncryptedStore.counter`
  somewhere the attacker cannot roll back (the OS keystore, beside the key); a device
  cannot detect a rollback of everything it stores by itself.
* the scrypt cost read from a header is bounded (n from 2^17, OWASP's minimum, to 2^20),
  so a crafted header cannot make opening take minutes or gigabytes, nor weaken the key.
"""

from __future__ import annotations

import base64
import hmac
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from recsys_core.errors import FedrecError
from recsys_core.files import write_atomically

MAGIC = b"FEDRECSTORE"
#: 2: the header carries the store's identity and a write counter.
VERSION = 2
KEY_BYTES = 32
NONCE_BYTES = 12
#: scrypt cost: 2^17 x 8 x 1 (OWASP's minimum) takes about 0.4 s and 128 MiB, once per opening.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 17, 8, 1
#: What a header may ask of scrypt: below these the key is too cheap to guess, above them opening is a denial of
#: service.
SCRYPT_N_RANGE, SCRYPT_R_RANGE, SCRYPT_P_RANGE = (1 << 17, 1 << 20), (8, 32), (1, 16)
MIN_SALT_BYTES = 16

Arrays = dict[str, np.ndarray]


class StoreError(FedrecError):
    """The store cannot be read: missing, not a store, corrupt or tampered."""


class WrongKeyError(StoreError):
    """The passphrase or key does not open this store."""


@dataclass(frozen=True)
class KeySource:
    """Where the store's key comes from: a passphrase (scrypt) or a 32-byte key the app holds (OS keystore)."""

    passphrase: str | None = None
    app_key: bytes | None = None

    def __post_init__(self) -> None:
        if (self.passphrase is None) == (self.app_key is None):
            raise ValueError("give exactly one of passphrase and app_key")
        if self.app_key is not None and len(self.app_key) != KEY_BYTES:
            raise ValueError(f"app_key must be {KEY_BYTES} bytes, got {len(self.app_key)}")
        if self.passphrase is not None and not self.passphrase:
            raise ValueError("the passphrase must not be empty")

    @classmethod
    def from_passphrase(cls, passphrase: str) -> KeySource:
        return cls(passphrase=passphrase)

    @classmethod
    def from_app_key(cls, key: bytes) -> KeySource:
        return cls(app_key=key)

    def new_header(self) -> dict[str, object]:
        if self.passphrase is not None:
            return {"kdf": "scrypt", "salt": base64.b64encode(os.urandom(16)).decode(), "n": SCRYPT_N,
                    "r": SCRYPT_R, "p": SCRYPT_P}
        return {"kdf": "app-key"}

    def derive(self, header: dict[str, object]) -> bytes:
        kdf = header.get("kdf")
        if kdf == "app-key":
            if self.app_key is None:
                raise WrongKeyError("this store is opened with a key from the app, not a passphrase")
            return self.app_key
        if kdf == "scrypt":
            if self.passphrase is None:
                raise WrongKeyError("this store is opened with a passphrase, not an app key")
            salt = base64.b64decode(str(header["salt"]))
            n, r, p = (int(str(header[name])) for name in ("n", "r", "p"))
            for name, value, (low, high) in (("n", n, SCRYPT_N_RANGE), ("r", r, SCRYPT_R_RANGE),
                                             ("p", p, SCRYPT_P_RANGE)):
                if not low <= value <= high:
                    raise StoreError(f"scrypt {name} = {value} is outside [{low}, {high}]")
            if len(salt) < MIN_SALT_BYTES:
                raise StoreError(f"the scrypt salt is {len(salt)} bytes, fewer than {MIN_SALT_BYTES}")
            return Scrypt(salt=salt, length=KEY_BYTES, n=n, r=r, p=p).derive(self.passphrase.encode())
        raise StoreError(f"unknown key derivation {kdf!r}")


def _check_value(key: bytes) -> str:
    """A value that shows whether a key is right without revealing it (an HKDF output, not the key)."""
    derived = HKDF(algorithm=hashes.SHA256(), length=16, salt=None, info=b"fedrec store key check").derive(key)
    return derived.hex()


class EncryptedStore:
    """One encrypted file holding named arrays; :meth:`save` replaces the whole content atomically."""

    def __init__(self, path: str | Path, key_source: KeySource, identity: str = "", min_counter: int = 0) -> None:
        """``identity``: whose store this is (a user or install id the app knows); a store made for another
        identity is refused. ``min_counter``: the write counter the app last kept in its keystore; an
        older store is a rollback and is refused."""
        self.path = Path(path)
        self.key_source = key_source
        self.identity = identity
        #: The write counter of the last version this object read or wrote (0: none yet).
        self.counter = min_counter
        self._key: bytes | None = None
        self._header: dict[str, object] | None = None

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> Arrays:
        """The stored arrays; raises :class:`WrongKeyError` or :class:`StoreError` naming the file."""
        if self.path.is_dir():
            raise StoreError(f"{self.path}: is a folder, not a store; give the path of the store file")
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{self.path}: no store here; create it by saving to it") from None
        header_bytes, nonce, ciphertext = self._split(data)
        try:
            header = json.loads(header_bytes)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise StoreError(f"{self.path}: its header is corrupt (tampered or damaged)") from None
        try:
            key = self.key_source.derive(header)
        except WrongKeyError as error:
            raise WrongKeyError(f"{self.path}: {error}") from None
        except StoreError as error:
            raise StoreError(f"{self.path}: its header is refused ({error}); tampered or damaged") from None
        except (KeyError, ValueError, TypeError):
            raise StoreError(f"{self.path}: its header is corrupt (tampered or damaged)") from None
        if not hmac.compare_digest(_check_value(key), str(header.get("key_check", ""))):
            raise WrongKeyError(f"{self.path}: the passphrase or key is wrong (or the store's header was altered)")
        try:
            plaintext = AESGCM(key).decrypt(nonce, ciphertext, header_bytes)
        except InvalidTag:
            raise StoreError(f"{self.path}: authentication failed: the file was tampered with or is corrupt; "
                             "restore it from a backup or start a new store") from None
        if header.get("identity") != self.identity:
            raise StoreError(f"{self.path}: this store belongs to identity {header.get('identity')!r}, not "
                             f"{self.identity!r}: another user's store was put in its place; restore this user's "
                             "own store")
        counter = header.get("counter")
        if not isinstance(counter, int) or counter < self.counter:
            raise StoreError(f"{self.path}: write counter {counter}, but this store was already at {self.counter}: an "
                             "older copy was put back (a rollback, which would restore a spent privacy budget); "
                             "restore the latest store")
        self._key, self._header, self.counter = key, header, counter
        with np.load(io.BytesIO(plaintext), allow_pickle=False) as stored:
            return {name: stored[name] for name in stored.files}

    def save(self, arrays: Arrays) -> None:
        """Encrypts ``arrays`` and replaces the file atomically (temporary file, fsync, rename)."""
        if self._key is None or self._header is None:
            if self.exists():
                self.load()  # checks the key before anything is overwritten
            else:
                header = self.key_source.new_header()
                key = self.key_source.derive(header)
                header.update(key_check=_check_value(key), store_id=os.urandom(16).hex(), identity=self.identity)
                self._key, self._header = key, header
        assert self._key is not None and self._header is not None
        self._header["counter"] = self.counter + 1
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        header_bytes = json.dumps(self._header, sort_keys=True).encode()
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = AESGCM(self._key).encrypt(nonce, buffer.getvalue(), header_bytes)
        payload = MAGIC + bytes([VERSION]) + len(header_bytes).to_bytes(4, "big") + header_bytes + nonce + ciphertext
        write_atomically(self.path, lambda stream: stream.write(payload))
        self.counter += 1

    def _split(self, data: bytes) -> tuple[bytes, bytes, bytes]:
        fixed = len(MAGIC) + 1 + 4
        if len(data) < fixed or not data.startswith(MAGIC):
            raise StoreError(f"{self.path}: not a fedrec store (or its first bytes were overwritten)")
        if data[len(MAGIC)] != VERSION:
            raise StoreError(f"{self.path}: store format version {data[len(MAGIC)]}, this fedrec reads {VERSION}")
        length = int.from_bytes(data[len(MAGIC) + 1:fixed], "big")
        if len(data) < fixed + length + NONCE_BYTES + 16:
            raise StoreError(f"{self.path}: truncated ({len(data)} bytes)")
        header = data[fixed:fixed + length]
        nonce = data[fixed + length:fixed + length + NONCE_BYTES]
        return header, nonce, data[fixed + length + NONCE_BYTES:]


