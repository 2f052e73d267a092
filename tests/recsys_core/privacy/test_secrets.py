"""Where DP noise comes from: a cryptographic stream from OS entropy, or (replays only) the run seed."""

from __future__ import annotations

import numpy as np
from randomgen import ChaCha

from recsys_core.privacy.secrets import USER_LEVEL_SHARE_SECRET, secret_generator


def test_os_entropy_noise_comes_from_chacha20_with_a_fresh_key_each_time() -> None:
    first = secret_generator("os_entropy", 0, 1, 1, USER_LEVEL_SHARE_SECRET)
    second = secret_generator("os_entropy", 0, 1, 1, USER_LEVEL_SHARE_SECRET)
    assert isinstance(first.bit_generator, ChaCha) and first.bit_generator.state["state"]["rounds"] == 20
    # Same run seed, round, party and purpose: still different noise, which nobody can regenerate.
    assert not np.array_equal(first.normal(size=8), second.normal(size=8))
    draws = secret_generator("os_entropy", 0, 1, 1, USER_LEVEL_SHARE_SECRET).normal(0.0, 2.0, size=200_000)
    assert abs(draws.mean()) < 0.03 and abs(draws.std() - 2.0) < 0.03


def test_run_seed_noise_replays_exactly() -> None:
    first = secret_generator("run_seed", 7, 3, 2, USER_LEVEL_SHARE_SECRET).normal(size=8)
    assert np.array_equal(first, secret_generator("run_seed", 7, 3, 2, USER_LEVEL_SHARE_SECRET).normal(size=8))
