"""Filtering steps that turn a loaded log into the log a model trains on.

Every function is pure: it takes an :class:`InteractionLog` and returns a new one
(or the same object when nothing changes). Steps that can leave users or items
without rows end with :func:`compact_ids`, so ids stay contiguous while the id maps
still lead back to the dataset's original ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal, get_args

import numpy as np

from recsys_core.data.interactions import InteractionLog
from recsys_core.errors import ConfigError


def to_implicit(log: InteractionLog, min_rating: float | None) -> InteractionLog:
    """Keeps the rows rated at least ``min_rating`` (``None`` keeps every row).

    The ratings column is kept, so later steps can still weight by it. Raises
    :class:`ConfigError` when a threshold is given but the log has no ratings.
    """
    if min_rating is None:
        return log
    threshold = _check_threshold(min_rating)
    if log.ratings is None:
        raise ConfigError(
            f"min_rating={threshold} needs explicit ratings, but dataset {log.name!r} has none"
        )
    return compact_ids(log.select(log.ratings >= threshold))


def drop_duplicate_interactions(
    log: InteractionLog, keep: Literal["first", "last"] = "first"
) -> InteractionLog:
    """Keeps one row per (user, item) pair: the chronologically first or last one.

    Weights add up: the kept row of a pair weighs what all its rows weighed (two
    rows of 3 and 4 plays are one of 7).
    """
    if keep not in ("first", "last"):
        raise ConfigError(f"keep must be 'first' or 'last', got {keep!r}")
    if log.n_interactions == 0:
        return log
    # Rows are sorted by user then time, so the first occurrence of a pair in row order
    # is its earliest; reversing the rows turns "last" into "first".
    pair = log.user_ids * np.int64(max(log.n_items, 1)) + log.item_ids
    if keep == "first":
        _, rows, inverse = np.unique(pair, return_index=True, return_inverse=True)
    else:
        _, reversed_rows, reversed_inverse = np.unique(pair[::-1], return_index=True, return_inverse=True)
        rows, inverse = log.n_interactions - 1 - reversed_rows, reversed_inverse[::-1]
    if len(rows) == log.n_interactions:
        return log
    order = np.argsort(rows)
    kept = log.select(rows[order])
    if log.weights is None:
        return kept
    summed = np.bincount(inverse, weights=log.weights, minlength=len(rows))[order]
    return replace(kept, weights=summed.astype(np.float32))


WeightTransform = Literal["log1p", "raw", "ignore"]


def apply_weights(log: InteractionLog, min_weight: float | None, transform: WeightTransform) -> InteractionLog:
    """Turns a log's raw feedback weights (play counts) into the weights models train with.

    Rows below ``min_weight`` go (``None``: keep all), and so do rows of weight 0, which
    record no interaction. ``transform``: ``log1p`` weighs a row ``log2(1 + w)``, so one
    play weighs 1 like an unweighted row, 3 plays 2, 1,023 plays 10: heavy listeners do
    not drown everyone else (Hu, Koren and Volinsky's confidence). ``raw`` keeps ``w``;
    ``ignore`` drops the weights, and every row then counts once. A log without weights
    is returned as it is, unless ``min_weight`` asks for them.
    """
    if log.weights is None:
        if min_weight is not None:
            raise ConfigError(f"data.preprocessing.min_weight={min_weight} needs a weight column "
                              f"(data.columns.weight), but dataset {log.name!r} has none")
        return log
    threshold = 0.0 if min_weight is None else _check_threshold(min_weight, "min_weight")
    keep = (log.weights > 0) & (log.weights >= threshold)
    if not keep.all():
        log = compact_ids(log.select(keep))
    assert log.weights is not None
    if transform == "ignore":
        return replace(log, weights=None)
    if transform == "log1p":
        return replace(log, weights=(np.log1p(log.weights.astype(np.float64)) / math.log(2)).astype(np.float32))
    return log


def k_core(
    log: InteractionLog, min_user_interactions: int, min_item_interactions: int
) -> InteractionLog:
    """Repeatedly drops users and items with too few rows until none is left to drop.

    Counts are rows, so duplicates count once per row; deduplicate first when that
    matters. The result has every user with ``>= min_user_interactions`` rows and
    every item with ``>= min_item_interactions`` rows (possibly an empty log).
    """
    min_user = _check_count("min_user_interactions", min_user_interactions)
    min_item = _check_count("min_item_interactions", min_item_interactions)
    keep = np.ones(log.n_interactions, dtype=bool)
    while True:
        user_counts = np.bincount(log.user_ids[keep], minlength=log.n_users)
        item_counts = np.bincount(log.item_ids[keep], minlength=log.n_items)
        still = (
            keep & (user_counts[log.user_ids] >= min_user) & (item_counts[log.item_ids] >= min_item)
        )
        if np.array_equal(still, keep):
            break
        keep = still
    return compact_ids(log if keep.all() else log.select(keep))


def compact_ids(log: InteractionLog) -> InteractionLog:
    """Drops users and items without rows and renumbers both sides contiguously.

    The id maps are composed (``IdMap.subset``), so internal ids still map to the
    dataset's original ids; item features and titles are subset the same way. Kept
    ids keep their relative order, so the rows stay sorted by user and time.
    """
    kept_users = np.flatnonzero(np.bincount(log.user_ids, minlength=log.n_users))
    kept_items = np.flatnonzero(np.bincount(log.item_ids, minlength=log.n_items))
    if len(kept_users) == log.n_users and len(kept_items) == log.n_items:
        return log
    return InteractionLog(
        user_ids=_renumber(log.user_ids, kept_users, log.n_users),
        item_ids=_renumber(log.item_ids, kept_items, log.n_items),
        timestamps=log.timestamps,
        ratings=log.ratings,
        user_map=log.user_map.subset(kept_users),
        item_map=log.item_map.subset(kept_items),
        name=log.name,
        item_features=None if log.item_features is None else log.item_features.subset(kept_items),
        item_titles=None if log.item_titles is None else log.item_titles[kept_items],
        weights=log.weights,
    )


def _renumber(ids: np.ndarray, kept: np.ndarray, n_old: int) -> np.ndarray:
    new_id = np.full(n_old, -1, dtype=np.int64)
    new_id[kept] = np.arange(len(kept), dtype=np.int64)
    return new_id[ids]


@dataclass(frozen=True)
class PreprocessingConfig:
    """Which filters :func:`preprocess` applies.

    ``min_rating``: keep rows rated at least this (``None``: keep all).
    ``min_user_interactions`` / ``min_item_interactions``: k-core thresholds (0: off).
    ``deduplicate``: keep only the first row of every (user, item) pair (weights add up).
    ``min_weight`` and ``weight_transform``: how a weight column (``data.columns.weight``,
    e.g. play counts) becomes interaction weights (:func:`apply_weights`).
    """

    min_rating: float | None = None
    min_user_interactions: int = 0
    min_item_interactions: int = 0
    deduplicate: bool = True
    min_weight: float | None = None
    weight_transform: WeightTransform = "log1p"

    def validate(self) -> None:
        """Raises :class:`ConfigError` naming the first invalid field."""
        if self.min_rating is not None:
            _check_threshold(self.min_rating)
        if self.min_weight is not None:
            _check_threshold(self.min_weight, "min_weight")
        if self.weight_transform not in get_args(WeightTransform):
            allowed = ", ".join(repr(value) for value in get_args(WeightTransform))
            raise ConfigError(f"weight_transform must be one of {allowed}, got {self.weight_transform!r}")
        _check_count("min_user_interactions", self.min_user_interactions)
        _check_count("min_item_interactions", self.min_item_interactions)
        if not isinstance(self.deduplicate, bool):
            raise ConfigError(f"deduplicate must be true or false, got {self.deduplicate!r}")


def preprocess(log: InteractionLog, config: PreprocessingConfig) -> InteractionLog:
    """Applies the configured filters: rating threshold, deduplication, k-core, compaction.

    The threshold comes first so that a low re-rating does not hide an item the user
    also rated highly; deduplication precedes the k-core so that repeats do not count
    towards it, and the weights so that a pair's plays add up before ``min_weight``.
    """
    config.validate()
    log = _kept(log, to_implicit(log, config.min_rating), f"data.preprocessing.min_rating = {config.min_rating}")
    if config.deduplicate:
        log = drop_duplicate_interactions(log, keep="first")
    log = _kept(log, apply_weights(log, config.min_weight, config.weight_transform),
                "the weight column (data.columns.weight), where every row weighs 0, which records no interaction,"
                if config.min_weight is None else f"data.preprocessing.min_weight = {config.min_weight}")
    if config.min_user_interactions > 0 or config.min_item_interactions > 0:
        log = _kept(log, k_core(log, config.min_user_interactions, config.min_item_interactions),
                    f"the k-core (data.preprocessing.min_user_interactions = {config.min_user_interactions}, "
                    f"min_item_interactions = {config.min_item_interactions})")
    return compact_ids(log)


def _kept(before: InteractionLog, after: InteractionLog, step: str) -> InteractionLog:
    """``after``, unless the step emptied a log that had rows: that is one error naming the step."""
    if after.n_interactions == 0 and before.n_interactions > 0:
        raise ConfigError(f"{step} removes all {before.n_interactions:,} interactions of {before.name!r}; "
                          "relax the setting, or check the column it reads")
    return after


def _check_threshold(threshold: object, name: str = "min_rating") -> float:
    if isinstance(threshold, bool) or not isinstance(
        threshold, int | float | np.integer | np.floating
    ):
        raise ConfigError(f"{name} must be a number or null, got {threshold!r}")
    if not math.isfinite(float(threshold)):
        raise ConfigError(f"{name} must be finite, got {threshold}")
    return float(threshold)


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value}")
    return int(value)
