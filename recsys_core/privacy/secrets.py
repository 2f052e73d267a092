"""Where a DP secret's randomness comes from: the noise, the Poisson batches, a noise share.

By default (``privacy.noise_source = "os_entropy"``) every secret comes from the operating
system's entropy: the run seed is public, and noise that can be regenerated from it could be
subtracted again. ``"run_seed"`` derives each secret from ``(run seed, round, party, purpose)``
instead, so a DP run can be replayed exactly, for instance to check that two engines compute
the same thing. Such a run is **not private** against anyone who knows the seed; the summary,
the progress display and ``fedrec audit`` (which fails it) all say so. Opacus makes the same
choice with ``secure_mode``.

OS-entropy secrets come from ChaCha20 (20 rounds, 256-bit key from ``os.urandom``) driving
numpy's samplers, as Opacus's ``secure_mode`` uses a cryptographic generator: a statistical
generator such as PCG64 has a state that enough of its output can reveal.
"""

from __future__ import annotations

import os
from typing import Literal, get_args

import numpy as np
from randomgen import ChaCha

NoiseSource = Literal["os_entropy", "run_seed"]
NOISE_SOURCES: tuple[str, ...] = get_args(NoiseSource)

#: What a secret is for: a device's local DP-SGD (batches and noise), its user-level update's noise share,
#: the server's central noise. Part of the seed, so no two purposes share a stream.
LOCAL_DP_SECRET = 1
USER_LEVEL_SHARE_SECRET = 2
CENTRAL_NOISE_SECRET = 3

#: The party of the server's secret; device ``p`` is party ``p + 1``.
SERVER_PARTY = 0

NOT_PRIVATE_WARNING = ("privacy.noise_source = 'run_seed': the DP noise is derived from the public run seed, so "
                       "this run is NOT private; use it only to replay or compare runs")


def secret_generator(source: NoiseSource, run_seed: int, server_round: int, party: int,
                     purpose: int) -> np.random.Generator:
    """The generator of one secret: OS entropy, or under ``run_seed`` one derived from the public run seed."""
    if source == "os_entropy":
        return np.random.Generator(ChaCha(key=int.from_bytes(os.urandom(32), "little"), counter=0, rounds=20))
    return np.random.default_rng(np.random.SeedSequence([run_seed, server_round, party, purpose]))
