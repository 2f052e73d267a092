"""Key agreement, round keys and encrypted shares."""

from __future__ import annotations

import pytest

from recsys_core.secure_aggregation.keys import (
    PUBLIC_KEY_BYTES,
    SEED_BYTES,
    DeviceKeys,
    ShareDecryptionError,
    decrypt_share,
    encrypt_share,
    round_key,
    share_context,
)


def test_key_and_seed_sizes() -> None:
    keys = DeviceKeys.generate()
    assert len(keys.private_key) == 32 and len(keys.public_key) == PUBLIC_KEY_BYTES == 32
    assert SEED_BYTES * 8 == 256
    assert len(round_key(b"s" * 32, "mask", "run", 1, 1, 2)) == SEED_BYTES


def test_both_devices_derive_the_same_round_key_and_rounds_differ() -> None:
    alice, bob = DeviceKeys.generate(), DeviceKeys.generate()
    shared = alice.agree(bob.public_key)
    assert shared == bob.agree(alice.public_key)
    assert round_key(shared, "mask", "run", 3, 5, 9) == round_key(shared, "mask", "run", 3, 9, 5)
    keys = {round_key(shared, purpose, run, server_round, 5, 9)
            for purpose in ("mask", "share-encryption") for run in ("a", "b") for server_round in (1, 2)}
    assert len(keys) == 8


def test_a_share_opens_only_in_its_own_context() -> None:
    key = round_key(b"k" * 32, "share-encryption", "run", 1, 1, 2)
    ciphertext = encrypt_share(key, b"share", share_context("run", 1, 1, 2))
    assert decrypt_share(key, ciphertext, share_context("run", 1, 1, 2)) == b"share"
    tampered = ciphertext[:-1] + bytes([ciphertext[-1] ^ 1])
    for context, data in [(share_context("run", 2, 1, 2), ciphertext),  # replayed into round 2
                          (share_context("run", 1, 1, 3), ciphertext),  # misaddressed
                          (share_context("run", 1, 1, 2), tampered),    # forged
                          (share_context("run", 1, 1, 2), b"short")]:
        with pytest.raises(ShareDecryptionError, match="failed authentication"):
            decrypt_share(key, data, context)


def test_a_malformed_public_key_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        DeviceKeys.generate().agree(b"\x00" * 31)
