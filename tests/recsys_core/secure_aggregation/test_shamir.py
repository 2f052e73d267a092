"""Shamir secret sharing over GF(2^521 - 1)."""

from __future__ import annotations

import os

import pytest

from recsys_core.secure_aggregation.shamir import ELEMENT_BYTES, PRIME, Share, recover_secret, split_secret


def test_field_is_far_larger_than_two_to_the_128() -> None:
    assert PRIME.bit_length() == 521 and pow(3, PRIME - 1, PRIME) == 1  # Fermat check of a known prime


def test_any_threshold_shares_recover_the_secret() -> None:
    secret = os.urandom(32)
    shares = split_secret(secret, 4, [11, 22, 33, 44, 55, 66, 77])
    for subset in (shares[:4], shares[3:], shares[::2], shares):
        assert recover_secret(subset, 32) == secret


def test_fewer_than_threshold_shares_give_a_different_secret() -> None:
    secret = os.urandom(32)
    shares = split_secret(secret, 4, [1, 2, 3, 4, 5])
    # read as a whole field element, so a wrong value is returned rather than refused for its size
    recovered = recover_secret(shares[:3], ELEMENT_BYTES)
    assert recovered != secret.rjust(ELEMENT_BYTES, b"\x00")
    assert recover_secret(shares[:4], ELEMENT_BYTES) == secret.rjust(ELEMENT_BYTES, b"\x00")


def test_shares_round_trip_through_bytes_and_reject_garbage() -> None:
    share = split_secret(b"\x01" * 32, 2, [7, 8])[0]
    data = share.to_bytes()
    assert len(data) == 9 + ELEMENT_BYTES and Share.from_bytes(data) == share
    with pytest.raises(ValueError, match="bytes"):
        Share.from_bytes(data[:-1])
    with pytest.raises(ValueError, match="outside the field"):
        Share.from_bytes(bytes(9) + data[9:])  # x = 0 is the secret's own coordinate


@pytest.mark.parametrize(("threshold", "holders"), [(0, [1, 2]), (3, [1, 2]), (2, [1, 1]), (2, [0, 1])])
def test_bad_parameters_are_refused(threshold: int, holders: list[int]) -> None:
    with pytest.raises(ValueError):
        split_secret(b"secret", threshold, holders)
