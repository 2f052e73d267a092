"""Fixed-point quantisation with clipping ranges and an overflow-free modulus."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_core.secure_aggregation.fixed_point import FixedPointCodec, OutOfRangeSumError
from recsys_core.secure_aggregation.masks import add_mod


def test_sum_of_encoded_vectors_decodes_within_the_stated_error() -> None:
    rng = np.random.default_rng(0)
    ranges = np.array([0.1, 1.0, 100.0, 5.0])
    codec = FixedPointCodec(ranges, max_devices=50)
    values = rng.uniform(-1, 1, size=(50, 4)) * ranges
    total = np.zeros(4, dtype=np.uint32)
    for row in values:
        total = add_mod(total, codec.encode(row), 32)
    decoded = codec.decode_sum(total, 50)
    assert np.all(np.abs(decoded - values.sum(axis=0)) <= codec.max_error(50))
    assert np.all(codec.max_error(50) < ranges * 1e-6)


def test_values_are_clipped_to_their_range() -> None:
    codec = FixedPointCodec(np.array([1.0, 2.0]), max_devices=3)
    decoded = codec.decode_sum(codec.encode(np.array([5.0, -7.0])), 1)
    assert np.allclose(decoded, [1.0, -2.0], atol=1e-6)


def test_the_largest_in_range_sum_cannot_overflow() -> None:
    codec = FixedPointCodec(np.array([1.0]), max_devices=1000)
    assert 1000 * codec.levels < 2**32
    top = codec.encode(np.array([1.0]))
    assert int(top[0]) == codec.levels


def test_a_sum_above_what_in_range_clients_send_is_refused() -> None:
    codec = FixedPointCodec(np.array([1.0, 1.0]), max_devices=10)
    cheat = np.array([codec.levels * 4, 0], dtype=np.uint32)
    with pytest.raises(OutOfRangeSumError, match="out-of-range"):
        codec.decode_sum(cheat, 2)


@pytest.mark.parametrize("ranges", [np.array([0.0]), np.array([-1.0]), np.array([np.inf]), np.ones((2, 2))])
def test_bad_ranges_are_refused(ranges: np.ndarray) -> None:
    with pytest.raises(ValueError, match="clip_ranges"):
        FixedPointCodec(ranges, max_devices=2)


def test_wrong_length_and_non_finite_values_are_refused() -> None:
    codec = FixedPointCodec(np.ones(3), max_devices=2)
    with pytest.raises(ValueError, match="expected 3 values"):
        codec.encode(np.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        codec.encode(np.array([0.0, np.nan, 0.0]))


def test_the_largest_exact_modulus_sums_without_wrapping_and_above_it_is_refused() -> None:
    # At 64 bits two devices each sending +10 decoded to -20: float64 rounded the encoded integers.
    codec = FixedPointCodec(np.full(3, 10.0), max_devices=2, modulus_bits=53)
    total = codec.encode(np.full(3, 10.0)) + codec.encode(np.full(3, 10.0))
    np.testing.assert_allclose(codec.decode_sum(total, 2), np.full(3, 20.0), atol=codec.max_error(2).max())
    for bits in (54, 64):
        with pytest.raises(ValueError, match=f"modulus_bits = {bits}: above 53"):
            FixedPointCodec(np.full(3, 10.0), max_devices=2, modulus_bits=bits)
