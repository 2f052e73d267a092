"""Train / validation / test splits of an interaction log.

Both splits hold out whole rows per user, so a held-out interaction never
appears in training. Every part keeps the full id maps, so the same ids mean
the same users and items in all three.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from recsys_core.data.interactions import InteractionLog
from recsys_core.errors import ConfigError

SplitMethod = Literal["leave_one_out", "random_holdout"]


@dataclass(frozen=True)
class SplitConfig:
    """How to hold out evaluation data.

    ``leave_one_out``: per user, the last interaction is the test item and the
    second-to-last the validation item (users with fewer than
    ``min_interactions_to_evaluate`` interactions train on everything).
    ``random_holdout``: per user, a seeded random ``test_fraction`` of rows is
    the test set and ``valid_fraction`` the validation set.
    """

    method: SplitMethod = "leave_one_out"
    test_fraction: float = 0.2
    valid_fraction: float = 0.1
    min_interactions_to_evaluate: int = 3
    seed: int = 0

    def validate(self) -> SplitConfig:
        if self.method not in ("leave_one_out", "random_holdout"):
            raise ConfigError(
                f"split.method: unknown method {self.method!r}; use 'leave_one_out' or 'random_holdout'"
            )
        for name in ("test_fraction", "valid_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"split.{name}: must be in [0, 1), got {value}")
        if self.test_fraction + self.valid_fraction >= 1.0:
            raise ConfigError("split: test_fraction + valid_fraction must be below 1")
        if self.min_interactions_to_evaluate < 3:
            raise ConfigError("split.min_interactions_to_evaluate: must be at least 3")
        return self


@dataclass(frozen=True)
class DatasetSplit:
    """The three parts of a split; each is an :class:`InteractionLog` over the same ids."""

    train: InteractionLog
    valid: InteractionLog
    test: InteractionLog

    def history_before(self, part: Literal["valid", "test"]) -> InteractionLog:
        """What a user has seen when ``part`` is evaluated: train, plus valid for test."""
        if part == "valid":
            return self.train
        return merge_logs(self.train, self.valid)


def merge_logs(first: InteractionLog, second: InteractionLog) -> InteractionLog:
    """Rows of both logs (same id maps), re-sorted by user and time."""
    return InteractionLog.from_arrays(
        np.concatenate([first.user_ids, second.user_ids]),
        np.concatenate([first.item_ids, second.item_ids]),
        np.concatenate([first.timestamps, second.timestamps]),
        None if first.ratings is None or second.ratings is None
        else np.concatenate([first.ratings, second.ratings]),
        first.user_map,
        first.item_map,
        first.name,
        first.item_features,
        first.item_titles,
    )


def split_log(log: InteractionLog, config: SplitConfig) -> DatasetSplit:
    """Splits ``log`` as ``config`` says."""
    config.validate()
    counts = np.diff(log.user_offsets)
    # Rank of each row within its user, in chronological order (the log is sorted that way).
    position = np.arange(log.n_interactions) - np.repeat(log.user_offsets[:-1], counts)
    user_count = np.repeat(counts, counts)
    if config.method == "leave_one_out":
        evaluable = user_count >= config.min_interactions_to_evaluate
        is_test = evaluable & (position == user_count - 1)
        is_valid = evaluable & (position == user_count - 2)
    else:
        is_test, is_valid = _random_holdout_masks(log, config, counts, user_count)
    is_train = ~(is_test | is_valid)
    return DatasetSplit(log.select(is_train), log.select(is_valid), log.select(is_test))


def _random_holdout_masks(
    log: InteractionLog, config: SplitConfig, counts: np.ndarray, user_count: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    generator = np.random.default_rng(config.seed)
    random_keys = generator.random(log.n_interactions)
    order = np.lexsort((random_keys, log.user_ids))
    random_rank = np.empty(log.n_interactions, dtype=np.int64)
    random_rank[order] = np.arange(log.n_interactions) - np.repeat(log.user_offsets[:-1], counts)
    evaluable = user_count >= config.min_interactions_to_evaluate
    # At least one held-out row in each part, and at least one row left for training.
    n_test = np.maximum(np.round(user_count * config.test_fraction), 1).astype(np.int64)
    n_valid = np.round(user_count * config.valid_fraction).astype(np.int64)
    if config.valid_fraction > 0:
        n_valid = np.maximum(n_valid, 1)
    n_valid = np.minimum(n_valid, np.maximum(user_count - n_test - 1, 0))
    is_test = evaluable & (random_rank < n_test)
    is_valid = evaluable & ~is_test & (random_rank < n_test + n_valid)
    return is_test, is_valid
