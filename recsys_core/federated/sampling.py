"""Which clients take part in a round: seeded by (run seed, round, purpose), so it can be replayed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TRAINING = 1
EVALUATION = 2


def sample_partitions(seed: int, server_round: int, purpose: int, partitions: Sequence[int], count: int) -> list[int]:
    """``count`` of ``partitions`` (all if fewer), sorted; the same for every run with the same seed."""
    available = np.array(sorted(partitions), dtype=np.int64)
    generator = np.random.default_rng([seed, server_round, purpose])
    return sorted(generator.choice(available, size=min(count, len(available)), replace=False).tolist())
