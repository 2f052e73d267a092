"""The synthetic generator: validity, determinism, and the structure models should learn."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from recsys_core.data.interactions import InteractionLog
from recsys_core.data.synthetic import SyntheticConfig, generate_synthetic
from recsys_core.errors import ConfigError


@pytest.fixture(scope="module")
def log() -> InteractionLog:
    return generate_synthetic(SyntheticConfig())


def _genres(log: InteractionLog) -> np.ndarray:
    assert log.item_features is not None
    return log.item_features.values[:, :-1].astype(np.float64)


def _top_share(log: InteractionLog, fraction: float = 0.1) -> float:
    counts = np.sort(np.bincount(log.item_ids, minlength=log.n_items))[::-1]
    return counts[: max(1, int(fraction * log.n_items))].sum() / counts.sum()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_users", 0),
        ("n_items", -3),
        ("n_taste_clusters", 0),
        ("n_genres", 1.5),
        ("mean_interactions_per_user", 2.0),
        ("mean_interactions_per_user", 1000.0),
        ("min_interactions_per_user", 0),
        ("min_interactions_per_user", 301),
        ("popularity_exponent", -0.1),
        ("popularity_exponent", float("nan")),
        ("drift", 1.5),
        ("seed", -1),
        ("seed", True),
        ("latent_dim", 0),
        ("affinity_strength", -1.0),
        ("timespan_days", 0.0),
    ],
)
def test_invalid_config_names_the_field(field: str, value: object) -> None:
    config = dataclasses.replace(SyntheticConfig(), **{field: value})
    with pytest.raises(ConfigError, match=field):
        config.validate()
    with pytest.raises(ConfigError):
        generate_synthetic(config)


def test_same_seed_same_log_and_other_seed_differs() -> None:
    config = SyntheticConfig(n_users=120, n_items=80, mean_interactions_per_user=12)
    first, second = generate_synthetic(config), generate_synthetic(config)
    for column in ("user_ids", "item_ids", "timestamps", "ratings"):
        np.testing.assert_array_equal(getattr(first, column), getattr(second, column))
    np.testing.assert_array_equal(first.item_features.values, second.item_features.values)

    other = generate_synthetic(dataclasses.replace(config, seed=1))
    assert not np.array_equal(first.item_features.values, other.item_features.values)
    assert first.n_interactions != other.n_interactions or not np.array_equal(
        first.item_ids, other.item_ids
    )


def test_log_is_well_formed(log: InteractionLog) -> None:
    config = SyntheticConfig()
    assert log.name == "synthetic"
    assert (log.n_users, log.n_items) == (config.n_users, config.n_items)
    counts = np.diff(log.user_offsets)
    assert counts.min() >= config.min_interactions_per_user
    assert counts.max() <= config.n_items
    assert abs(counts.mean() - config.mean_interactions_per_user) < 0.15 * 30
    assert log.item_ids.min() >= 0 and log.item_ids.max() < log.n_items
    pairs = log.user_ids * log.n_items + log.item_ids
    assert len(np.unique(pairs)) == log.n_interactions, "duplicate (user, item) pairs"
    same_user = log.user_ids[1:] == log.user_ids[:-1]
    assert np.all(np.diff(log.user_ids) >= 0)
    assert np.all(np.diff(log.timestamps)[same_user] > 0), "timestamps must strictly increase"
    span_days = (log.timestamps.max() - log.timestamps.min()) / 86_400
    assert 300 < span_days <= config.timespan_days + 1
    starts = log.timestamps[log.user_offsets[:-1]]
    assert np.std(starts) > 30 * 86_400, "users should start at different times"
    assert log.ratings is not None and set(np.unique(log.ratings)) <= {1, 2, 3, 4, 5}


def test_item_features(log: InteractionLog) -> None:
    features = log.item_features
    assert features is not None
    n_genres = SyntheticConfig().n_genres
    assert features.values.shape == (log.n_items, n_genres + 1)
    assert features.values.dtype == np.float32
    assert features.names == (*(f"genre_{g}" for g in range(n_genres)), "year")
    genres_per_item = _genres(log).sum(axis=1)
    assert set(np.unique(genres_per_item)) == {1, 2, 3}
    assert set(np.unique(_genres(log))) == {0, 1}
    year = features.values[:, -1]
    assert year.min() >= 0 and year.max() <= 1 and len(np.unique(year)) > 10


def test_popularity_is_long_tailed(log: InteractionLog) -> None:
    # Uniform choice would give the top 10% of items about 10% of interactions.
    assert _top_share(log) > 0.25
    flat = generate_synthetic(SyntheticConfig(popularity_exponent=0.0))
    assert _top_share(log) > _top_share(flat) + 0.08


def _drift_excess(log: InteractionLog) -> float:
    """Mean genre distance between each user's halves, minus that of shuffled histories."""
    genres = _genres(log)
    rng = np.random.default_rng(123)

    def distance(items: np.ndarray) -> float:
        half = len(items) // 2
        early, late = genres[items[:half]].sum(0), genres[items[half:]].sum(0)
        return 0.5 * np.abs(early / early.sum() - late / late.sum()).sum()

    excess = [
        distance(items) - distance(rng.permutation(items))
        for items in (log.items_of(u) for u in range(log.n_users))
        if len(items) >= 20
    ]
    return float(np.mean(excess))


def test_taste_drifts_more_than_chance() -> None:
    config = SyntheticConfig(n_users=800)
    excess = {
        drift: _drift_excess(generate_synthetic(dataclasses.replace(config, drift=drift)))
        for drift in (0.0, 0.5, 1.0)
    }
    # Some excess exists even without drift (favourites are used up early); drift adds more.
    assert excess[0.0] < excess[0.5] < excess[1.0]
    assert excess[0.5] > 0.03
    assert excess[1.0] > 3 * excess[0.0]


def _hit_rates(log: InteractionLog, k: int = 10) -> dict[str, float]:
    """Leave-last-out hit@k of popularity and of item co-occurrence kNN."""
    last = log.user_offsets[1:] - 1
    train = np.ones(log.n_interactions, dtype=bool)
    train[last] = False
    seen = np.zeros((log.n_users, log.n_items))
    seen[log.user_ids[train], log.item_ids[train]] = 1
    popularity = seen.sum(axis=0)
    cooccurrence = seen.T @ seen
    np.fill_diagonal(cooccurrence, 0)
    cosine = cooccurrence / np.sqrt(np.outer(popularity, popularity) + 1e-9)
    scores = {"popularity": np.tile(popularity, (log.n_users, 1)), "item_knn": seen @ cosine}
    rates = {}
    for name, score in scores.items():
        score[seen > 0] = -np.inf
        top = np.argsort(-score, axis=1, kind="stable")[:, :k]
        rates[name] = float((top == log.item_ids[last][:, None]).any(axis=1).mean())
    return rates


@pytest.mark.parametrize("seed", [0, 1])
def test_personalised_baseline_beats_popularity(seed: int) -> None:
    rates = _hit_rates(generate_synthetic(SyntheticConfig(seed=seed)))
    assert rates["item_knn"] > rates["popularity"] + 0.05, rates


def test_recent_items_predict_the_next_one_better_than_old_ones(log: InteractionLog) -> None:
    genres = _genres(log)
    recent, old = [], []
    for user in range(log.n_users):
        items = log.items_of(user)
        if len(items) < 16:
            continue
        target = genres[items[-1]]
        for window, out in ((items[-6:-1], recent), (items[:5], old)):
            profile = genres[window].sum(axis=0)
            out.append(target @ profile / (np.linalg.norm(target) * np.linalg.norm(profile)))
    assert np.mean(recent) > np.mean(old) + 0.03


def test_edge_configs() -> None:
    every_item = generate_synthetic(
        SyntheticConfig(
            n_users=3,
            n_items=6,
            mean_interactions_per_user=6,
            min_interactions_per_user=6,
            n_genres=1,
        )
    )
    assert every_item.n_interactions == 18
    for user in range(3):
        assert sorted(every_item.items_of(user).tolist()) == list(range(6))
    no_ratings = generate_synthetic(SyntheticConfig(n_users=5, with_ratings=False))
    assert no_ratings.ratings is None


def test_generation_is_fast() -> None:
    start = time.perf_counter()
    generate_synthetic(SyntheticConfig(seed=7))
    # Typically ~0.1 s; the bound only catches a slide back to per-row Python loops.
    assert time.perf_counter() - start < 1.5
