"""Preprocessing: thresholds, deduplication, k-core and id compaction."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from recsys_core.data.interactions import IdMap, InteractionLog, ItemFeatures
from recsys_core.data.preprocessing import (
    PreprocessingConfig,
    compact_ids,
    drop_duplicate_interactions,
    k_core,
    preprocess,
    to_implicit,
)
from recsys_core.errors import ConfigError


def _random_string_log(seed: int, n_rows: int = 3000) -> InteractionLog:
    """Skewed random log with string original ids, duplicates, ratings and features."""
    rng = np.random.default_rng(seed)
    users = rng.zipf(1.6, size=n_rows) % 150
    items = rng.zipf(1.4, size=n_rows) % 120
    log = InteractionLog.from_original_ids(
        users=np.array([f"u{u:03d}" for u in users]),
        items=np.array([f"i{i:03d}" for i in items]),
        timestamps=rng.integers(0, 10_000, size=n_rows),
        ratings=rng.integers(1, 6, size=n_rows).astype(np.float32),
        name="random",
    )
    features = ItemFeatures(
        values=rng.random((log.n_items, 3)).astype(np.float32), names=("a", "b", "c")
    )
    titles = np.array([f"title of {original}" for original in log.item_map.original_ids])
    return dataclasses.replace(log, item_features=features, item_titles=titles)


def _original_triples(log: InteractionLog) -> set[tuple[str, str, int]]:
    users = log.user_map.to_original(log.user_ids)
    items = log.item_map.to_original(log.item_ids)
    return set(zip(users.tolist(), items.tolist(), log.timestamps.tolist(), strict=True))


def _assert_valid(log: InteractionLog) -> None:
    """Contiguous ids with no empty user/item, rows sorted by user then time."""
    assert np.array_equal(np.unique(log.user_ids), np.arange(log.n_users))
    assert np.array_equal(np.unique(log.item_ids), np.arange(log.n_items))
    order = np.lexsort((log.timestamps, log.user_ids))
    assert np.array_equal(order, np.arange(log.n_interactions))


def test_to_implicit_keeps_rows_at_or_above_threshold() -> None:
    log = InteractionLog.from_original_ids(
        users=np.array([10, 10, 20, 30, 30]),
        items=np.array([7, 8, 7, 9, 8]),
        timestamps=np.arange(5),
        ratings=np.array([4.0, 3.5, 2.0, 5.0, 4.0]),
    )
    implicit = to_implicit(log, 4.0)
    assert implicit.user_map.to_original(implicit.user_ids).tolist() == [10, 30, 30]
    assert implicit.item_map.to_original(implicit.item_ids).tolist() == [7, 9, 8]
    assert implicit.ratings.tolist() == [4.0, 5.0, 4.0]
    # User 20 had only a low rating: gone, and ids are contiguous again.
    assert implicit.user_map.original_ids.tolist() == [10, 30]
    assert to_implicit(log, None) is log


def test_to_implicit_needs_ratings_and_a_number() -> None:
    no_ratings = InteractionLog.from_original_ids(np.array([1]), np.array([2]))
    assert to_implicit(no_ratings, None) is no_ratings
    with pytest.raises(ConfigError, match="min_rating"):
        to_implicit(no_ratings, 3.0)
    rated = _random_string_log(0, 50)
    with pytest.raises(ConfigError, match="min_rating"):
        to_implicit(rated, float("nan"))


@pytest.mark.parametrize("keep", ["first", "last"])
def test_drop_duplicates_keeps_one_row_per_pair(keep: str) -> None:
    log = InteractionLog.from_original_ids(
        users=np.array(["a", "a", "a", "b", "b", "a"]),
        items=np.array(["x", "y", "x", "x", "x", "x"]),
        timestamps=np.array([1, 2, 3, 4, 5, 6]),
        ratings=np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
    )
    deduplicated = drop_duplicate_interactions(log, keep=keep)
    expected = {"first": [1.0, 2.0, 4.0], "last": [2.0, 6.0, 5.0]}[keep]
    assert deduplicated.ratings.tolist() == expected
    assert drop_duplicate_interactions(deduplicated, keep=keep) is deduplicated


def test_drop_duplicates_matches_a_reference_on_random_data() -> None:
    log = _random_string_log(1)
    deduplicated = drop_duplicate_interactions(log)
    first_seen: dict[tuple[int, int], int] = {}
    for row, pair in enumerate(zip(log.user_ids.tolist(), log.item_ids.tolist(), strict=True)):
        first_seen.setdefault(pair, row)
    expected_rows = sorted(first_seen.values())
    assert deduplicated.timestamps.tolist() == log.timestamps[expected_rows].tolist()
    assert deduplicated.item_ids.tolist() == log.item_ids[expected_rows].tolist()
    with pytest.raises(ConfigError, match="keep"):
        drop_duplicate_interactions(log, keep="middle")  # type: ignore[arg-type]


@pytest.mark.parametrize(("min_user", "min_item"), [(5, 5), (10, 3), (2, 20)])
def test_k_core_postcondition_and_fixed_point(min_user: int, min_item: int) -> None:
    log = _random_string_log(2)
    core = k_core(log, min_user, min_item)
    assert 0 < core.n_interactions < log.n_interactions
    _assert_valid(core)
    assert np.bincount(core.user_ids).min() >= min_user
    assert np.bincount(core.item_ids).min() >= min_item
    assert k_core(core, min_user, min_item) is core
    # Only whole users/items are removed: every surviving row is an original row.
    assert _original_triples(core) <= _original_triples(log)


def test_k_core_is_the_largest_core() -> None:
    # u1-u3 x i1-i3 is a 3-core. u4 links to it by two rows only and its other item
    # i4 has one row, so u4 must go, though its removal only shows after i4's.
    users = ["u1", "u1", "u1", "u2", "u2", "u2", "u3", "u3", "u3", "u4", "u4", "u4"]
    items = ["i1", "i2", "i3", "i1", "i2", "i3", "i1", "i2", "i3", "i1", "i2", "i4"]
    log = InteractionLog.from_original_ids(np.array(users), np.array(items))
    core = k_core(log, 3, 3)
    assert core.user_map.original_ids.tolist() == ["u1", "u2", "u3"]
    assert core.item_map.original_ids.tolist() == ["i1", "i2", "i3"]
    assert core.n_interactions == 9
    assert k_core(log, 5, 5).n_interactions == 0


def test_compact_ids_round_trips_to_original_ids() -> None:
    log = _random_string_log(3)
    # Remove every row of some users and items, then compact.
    drop_users, drop_items = np.arange(0, log.n_users, 3), np.arange(1, log.n_items, 4)
    kept_rows = ~np.isin(log.user_ids, drop_users) & ~np.isin(log.item_ids, drop_items)
    filtered = log.select(kept_rows)
    compact = compact_ids(filtered)
    _assert_valid(compact)
    assert compact.n_users < log.n_users and compact.n_items < log.n_items
    assert _original_triples(compact) == _original_triples(filtered)
    # Features and titles follow their items.
    old_items = log.item_map.to_internal(compact.item_map.original_ids)
    np.testing.assert_array_equal(compact.item_features.values, log.item_features.values[old_items])
    assert compact.item_titles.tolist() == [f"title of {i}" for i in compact.item_map.original_ids]
    assert np.array_equal(compact.ratings, filtered.ratings)
    assert compact_ids(compact) is compact


def test_compact_after_two_rounds_still_maps_to_the_dataset_ids() -> None:
    log = _random_string_log(4)
    twice = k_core(to_implicit(log, 3.0), 3, 3)
    original_users = twice.user_map.to_original(twice.user_ids)
    original_items = twice.item_map.to_original(twice.item_ids)
    assert all(user.startswith("u") for user in original_users.tolist())
    source = {
        (u, i, t, r)
        for u, i, t, r in zip(
            log.user_map.to_original(log.user_ids).tolist(),
            log.item_map.to_original(log.item_ids).tolist(),
            log.timestamps.tolist(),
            log.ratings.tolist(),
            strict=True,
        )
    }
    result = set(
        zip(
            original_users.tolist(),
            original_items.tolist(),
            twice.timestamps.tolist(),
            twice.ratings.tolist(),
            strict=True,
        )
    )
    assert result <= source and min(twice.ratings) >= 3.0


def test_preprocess_applies_every_step() -> None:
    log = _random_string_log(5)
    config = PreprocessingConfig(min_rating=2.0, min_user_interactions=4, min_item_interactions=4)
    result = preprocess(log, config)
    _assert_valid(result)
    assert result.ratings.min() >= 2.0
    pairs = result.user_ids * result.n_items + result.item_ids
    assert len(np.unique(pairs)) == result.n_interactions
    assert np.bincount(result.user_ids).min() >= 4 and np.bincount(result.item_ids).min() >= 4
    expected = k_core(drop_duplicate_interactions(to_implicit(log, 2.0)), 4, 4)
    assert _original_triples(result) == _original_triples(expected)


def test_preprocess_with_defaults_only_deduplicates() -> None:
    log = _random_string_log(6)
    result = preprocess(log, PreprocessingConfig())
    assert result.n_interactions == drop_duplicate_interactions(log).n_interactions
    assert preprocess(log, PreprocessingConfig(deduplicate=False)).n_interactions == (
        log.n_interactions
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("min_rating", "4"),
        ("min_rating", float("inf")),
        ("min_user_interactions", -1),
        ("min_item_interactions", 2.5),
        ("deduplicate", "yes"),
    ],
)
def test_invalid_preprocessing_config_names_the_field(field: str, value: object) -> None:
    config = dataclasses.replace(PreprocessingConfig(), **{field: value})
    with pytest.raises(ConfigError, match=field):
        config.validate()


def test_empty_log_passes_through() -> None:
    empty = InteractionLog(
        user_ids=np.zeros(0, dtype=np.int64),
        item_ids=np.zeros(0, dtype=np.int64),
        timestamps=np.zeros(0, dtype=np.int64),
        ratings=None,
        user_map=IdMap(np.zeros(0, dtype=np.int64)),
        item_map=IdMap(np.zeros(0, dtype=np.int64)),
    )
    assert preprocess(empty, PreprocessingConfig(min_user_interactions=2)).n_interactions == 0
