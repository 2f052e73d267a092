"""Train / validation / test splits of an interaction log.

Both splits hold out whole rows per user, so a held-out interaction never
appears in training. Every part keeps the full id maps, so the same ids mean
the same users and items in all three.

A log without timestamps (no user's rows differ in time) has no order to hold
out the last interaction by: leave-one-out would test each user on the last row
in file order, which on a file sorted by item id is the highest-numbered item.
The default method, ``auto``, is leave-one-out on a log with time order and a
random holdout, with one warning, on a log without; an explicit
``leave_one_out`` is honoured either way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

from recsys_core.data.interactions import InteractionLog
from recsys_core.errors import ConfigError

SplitMethod = Literal["auto", "leave_one_out", "random_holdout"]
ResolvedSplitMethod = Literal["leave_one_out", "random_holdout"]
_METHODS = ("auto", "leave_one_out", "random_holdout")

logger = logging.getLogger("fedrec.data")


@dataclass(frozen=True)
class SplitConfig:
    """How to hold out evaluation data.

    ``auto`` (the default): ``leave_one_out`` when the log orders some user's
    interactions in time, else ``random_holdout`` with a warning
    (:func:`resolve_split_method`).
    ``leave_one_out``: per user, the last interaction is the test item and the
    second-to-last the validation item (users with fewer than
    ``min_interactions_to_evaluate`` interactions train on everything).
    ``random_holdout``: per user, a seeded random ``test_fraction`` of rows is
    the test set and ``valid_fraction`` the validation set.
    """

    method: SplitMethod = "auto"
    test_fraction: float = 0.2
    valid_fraction: float = 0.1
    min_interactions_to_evaluate: int = 3
    seed: int = 0

    def validate(self) -> SplitConfig:
        if self.method not in _METHODS:
            raise ConfigError(
                f"split.method: unknown method {self.method!r}; use 'auto', 'leave_one_out' or 'random_holdout'"
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
        None if first.weights is None or second.weights is None
        else np.concatenate([first.weights, second.weights]),
    )


def has_time_order(log: InteractionLog) -> bool:
    """Whether the timestamps order any user's interactions.

    False when some user has two or more rows and no user's rows differ in time:
    the log has no timestamp column (every row is at 0) or stamps each user once.
    A log where no user has two rows has nothing to order and counts as ordered.
    """
    same_user = log.user_ids[1:] == log.user_ids[:-1]
    if not bool(same_user.any()):
        return True
    return bool((same_user & (log.timestamps[1:] != log.timestamps[:-1])).any())


def resolve_split_method(log: InteractionLog, config: SplitConfig) -> ResolvedSplitMethod:
    """The method :func:`split_log` uses: ``config.method``, with ``auto`` decided by the log.

    ``auto`` is ``leave_one_out`` on a log with time order (:func:`has_time_order`)
    and ``random_holdout`` on one without, with one warning on the ``fedrec.data``
    logger; leave-one-out there would test each user on the last row in file order.
    """
    if config.method != "auto":
        return config.method
    if has_time_order(log):
        return "leave_one_out"
    logger.warning(
        "%s has no timestamps (no user's interactions differ in time), so data.split.method = \"auto\" "
        "holds out a random %.0f%% test and %.0f%% validation sample per user (random_holdout, seed %d) "
        "instead of each user's last row in file order; set data.split.method = \"leave_one_out\" to "
        "test on file order, or map data.columns.timestamp",
        log.name, 100 * config.test_fraction, 100 * config.valid_fraction, config.seed,
    )
    return "random_holdout"


def split_log(log: InteractionLog, config: SplitConfig) -> DatasetSplit:
    """Splits ``log`` as ``config`` says (``auto``: see :func:`resolve_split_method`)."""
    config.validate()
    method = resolve_split_method(log, config)
    counts = np.diff(log.user_offsets)
    # Rank of each row within its user, in chronological order (the log is sorted that way).
    position = np.arange(log.n_interactions) - np.repeat(log.user_offsets[:-1], counts)
    user_count = np.repeat(counts, counts)
    if method == "leave_one_out":
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
