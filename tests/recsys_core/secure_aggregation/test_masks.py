"""Mask vectors from a cryptographic keystream."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

import recsys_core.secure_aggregation as secure_aggregation
from recsys_core.secure_aggregation.masks import add_mod, mask_vector, subtract_mod


def test_masks_are_deterministic_per_seed_and_sized_to_the_modulus() -> None:
    seed = os.urandom(32)
    mask = mask_vector(seed, 1000, 32)
    assert mask.dtype == np.uint32 and mask.shape == (1000,)
    assert np.array_equal(mask, mask_vector(seed, 1000, 32))
    assert not np.array_equal(mask, mask_vector(os.urandom(32), 1000, 32))
    narrow = mask_vector(seed, 1000, 20)
    assert narrow.max() < 1 << 20
    assert mask_vector(seed, 10, 40).dtype == np.uint64


def test_seeds_shorter_than_256_bits_are_refused() -> None:
    with pytest.raises(ValueError, match="256 bits"):
        mask_vector(b"\x00" * 16, 10, 32)


def test_modular_arithmetic_wraps_and_inverts() -> None:
    a = np.array([0, 1, 2**32 - 1], dtype=np.uint32)
    b = np.array([1, 2**32 - 1, 5], dtype=np.uint32)
    assert add_mod(a, b, 32).tolist() == [1, 0, 4]
    assert np.array_equal(subtract_mod(add_mod(a, b, 32), b, 32), a)
    small = np.array([1000], dtype=np.uint32)
    assert add_mod(small, np.array([100], dtype=np.uint32), 10).tolist() == [(1100) % 1024]


def test_no_statistical_generator_anywhere_in_the_mask_path() -> None:
    package = Path(secure_aggregation.__file__).parent
    forbidden = re.compile(r"np\.random|numpy\.random|default_rng|^\s*import random|from random import|"
                           r"torch\.(rand|manual_seed|Generator)", flags=re.M)
    offenders = [path.name for path in package.glob("*.py") if forbidden.search(path.read_text())]
    assert offenders == []
