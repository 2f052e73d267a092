"""The encrypted local store: round trips, wrong keys, tampering, and a kill in the middle of a write."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from client.sdk.store import EncryptedStore, KeySource, StoreError, WrongKeyError

KEY = KeySource.from_app_key(bytes(range(32)))


def test_arrays_round_trip_and_the_file_holds_no_plaintext(tmp_path: Path) -> None:
    store = EncryptedStore(tmp_path / "device.store", KeySource.from_passphrase("correct horse"))
    secret = np.arange(1000, dtype=np.int64) * 7919
    store.save({"interactions": secret, "note": np.frombuffer(b"private-user-notes", dtype=np.uint8)})
    loaded = EncryptedStore(tmp_path / "device.store", KeySource.from_passphrase("correct horse")).load()
    assert np.array_equal(loaded["interactions"], secret)
    raw = (tmp_path / "device.store").read_bytes()
    assert b"private-user-notes" not in raw and secret.tobytes()[:64] not in raw


def test_a_wrong_passphrase_or_key_is_named_as_such(tmp_path: Path) -> None:
    EncryptedStore(tmp_path / "a.store", KeySource.from_passphrase("right")).save({"x": np.ones(3)})
    with pytest.raises(WrongKeyError, match="passphrase or key is wrong"):
        EncryptedStore(tmp_path / "a.store", KeySource.from_passphrase("wrong")).load()
    EncryptedStore(tmp_path / "b.store", KEY).save({"x": np.ones(3)})
    with pytest.raises(WrongKeyError):
        EncryptedStore(tmp_path / "b.store", KeySource.from_app_key(bytes(32))).load()
    with pytest.raises(WrongKeyError, match="not a passphrase"):
        EncryptedStore(tmp_path / "b.store", KeySource.from_passphrase("right")).load()


def test_a_wrong_key_never_overwrites_the_store(tmp_path: Path) -> None:
    path = tmp_path / "a.store"
    EncryptedStore(path, KEY).save({"x": np.ones(3)})
    before = path.read_bytes()
    with pytest.raises(WrongKeyError):
        EncryptedStore(path, KeySource.from_app_key(bytes(32))).save({"x": np.zeros(3)})
    assert path.read_bytes() == before


@pytest.mark.parametrize("where", ["magic", "header", "nonce", "ciphertext", "tag", "truncated"])
def test_one_flipped_byte_or_a_truncation_is_reported_as_tampering(tmp_path: Path, where: str) -> None:
    path = tmp_path / "device.store"
    EncryptedStore(path, KEY).save({"x": np.arange(100)})
    data = bytearray(path.read_bytes())
    header_length = int.from_bytes(data[12:16], "big")
    position = {"magic": 0, "header": 16 + 2, "nonce": 16 + header_length + 1,
                "ciphertext": 16 + header_length + 12 + 5, "tag": len(data) - 1}.get(where)
    if position is None:
        data = data[: len(data) // 2]
    else:
        data[position] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=str(path)) as raised:
        EncryptedStore(path, KEY).load()
    assert any(word in str(raised.value) for word in ("tampered", "corrupt", "truncated", "not a fedrec store",
                                                      "altered"))


def test_a_process_killed_mid_write_loses_at_most_the_write_in_flight(tmp_path: Path) -> None:
    path = tmp_path / "device.store"
    writer = textwrap.dedent(f"""
        import sys
        import numpy as np
        from client.sdk.store import EncryptedStore, KeySource
        store = EncryptedStore({str(path)!r}, KeySource.from_app_key(bytes(range(32))))
        payload = np.random.default_rng(0).random(500_000)  # 4 MB per write
        for version in range(1, 100_000):
            store.save({{"version": np.array([version]), "payload": payload}})
            print(version, flush=True)
    """)
    process = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parents[3])
    assert process.stdout is not None
    committed = 0
    deadline = time.monotonic() + 60
    while committed < 5 and time.monotonic() < deadline:
        committed = int(process.stdout.readline() or committed)
    time.sleep(0.013)  # land somewhere inside a later write
    process.kill()
    process.wait(timeout=10)
    for line in process.stdout.read().split():
        committed = int(line)
    assert committed >= 5
    version = int(EncryptedStore(path, KEY).load()["version"][0])
    assert version in (committed, committed + 1)


def test_another_users_store_under_a_shared_app_key_is_refused(tmp_path: Path) -> None:
    EncryptedStore(tmp_path / "alice.store", KEY, identity="alice").save({"budget": np.array([7.5])})
    EncryptedStore(tmp_path / "bob.store", KEY, identity="bob").save({"budget": np.array([0.5])})
    (tmp_path / "alice.store").write_bytes((tmp_path / "bob.store").read_bytes())  # swapped in
    with pytest.raises(StoreError, match="belongs to identity 'bob', not 'alice': another user's store"):
        EncryptedStore(tmp_path / "alice.store", KEY, identity="alice").load()


def test_an_older_copy_of_the_store_is_refused_as_a_rollback(tmp_path: Path) -> None:
    path = tmp_path / "device.store"
    store = EncryptedStore(path, KEY)
    store.save({"spent": np.array([1.0])})
    old = path.read_bytes()
    store.save({"spent": np.array([7.9])})
    assert store.counter == 2
    path.write_bytes(old)  # the privacy accountant rolled back to before the last round
    with pytest.raises(StoreError, match="write counter 1, but this store was already at 2: an older copy"):
        store.load()
    # After a restart the store object is new: the app passes the counter it kept in its keystore.
    with pytest.raises(StoreError, match="rollback"):
        EncryptedStore(path, KEY, min_counter=2).load()
    assert EncryptedStore(path, KEY).load()["spent"][0] == 1.0  # with nothing kept, a device cannot tell


@pytest.mark.parametrize(("field", "value"), [("n", 1 << 10), ("n", 1 << 30), ("r", 1), ("p", 1000)])
def test_scrypt_costs_outside_their_bounds_are_refused_before_any_work(tmp_path: Path, field: str,
                                                                       value: int) -> None:
    import json

    path = tmp_path / "device.store"
    EncryptedStore(path, KeySource.from_passphrase("pw")).save({"x": np.ones(2)})
    data = path.read_bytes()
    length = int.from_bytes(data[12:16], "big")
    header = json.loads(data[16:16 + length])
    header[field] = value
    forged = json.dumps(header, sort_keys=True).encode()
    path.write_bytes(data[:12] + len(forged).to_bytes(4, "big") + forged + data[16 + length:])
    with pytest.raises(StoreError, match=f"scrypt {field} = {value} is outside"):
        EncryptedStore(path, KeySource.from_passphrase("pw")).load()


def test_a_folder_where_the_store_should_be_is_named(tmp_path: Path) -> None:
    from client.sdk.device import Device

    (tmp_path / "device.store").mkdir()
    with pytest.raises(StoreError, match="device.store: is a folder, not a store"):
        EncryptedStore(tmp_path / "device.store", KEY).load()
    with pytest.raises(StoreError, match="is a folder, not a store"):
        Device.open(tmp_path / "device.store", KEY)
