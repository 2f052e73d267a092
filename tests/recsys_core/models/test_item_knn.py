"""Item k-NN: unit-norm statistics per user (its user-level sensitivity), sums that federate, and its ranking."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_test_helpers import popularity_ndcg, synthetic_split, train

from recsys_core.data.interactions import IdMap, InteractionLog
from recsys_core.errors import ConfigError
from recsys_core.models import CatalogInfo, build_model
from recsys_core.models.item_knn import _recent_distinct, estimated_noise_std


def make_log(rows: list[tuple[int, int, int]], n_users: int, n_items: int) -> InteractionLog:
    users, items, times = (np.array(column, dtype=np.int64) for column in zip(*rows))
    return InteractionLog.from_arrays(users, items, times, None, IdMap(np.arange(n_users).astype(str)),
                                      IdMap(np.arange(n_items).astype(str)))


def fitted(log: InteractionLog, **options) -> torch.nn.Module:
    model = build_model("item_knn", CatalogInfo(n_users=log.n_users, n_items=log.n_items), options)
    model.fit_statistics(log)
    return model


def norm(tensor: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(tensor.double()))


@pytest.mark.parametrize("window", [0, 1, 3])
@pytest.mark.parametrize("history", [[4], [1, 2], [3, 1, 4, 1, 5, 9, 2, 6]])
def test_each_release_of_one_user_has_norm_exactly_one(window: int, history: list[int]) -> None:
    # Norm 1 for every history is what makes clip_norm = 1 the exact user-level sensitivity of each round.
    log = make_log([(0, item, time) for time, item in enumerate(history)], n_users=1, n_items=10)
    model = build_model("item_knn", CatalogInfo(n_users=1, n_items=10), {"window": window})
    model.fit_statistics_round(log, 1)
    assert norm(model.item_counts) == pytest.approx(1.0, abs=1e-6) and norm(model.cooccurrence) == 0
    counts = model.item_counts.clone()
    model.fit_statistics_round(log, 2)
    assert norm(model.cooccurrence) == pytest.approx(1.0, abs=1e-6)
    # Round 2 leaves the released counts as they were: its update to them is zero.
    assert torch.equal(model.item_counts, counts)


def test_each_rounds_statistics_of_many_users_are_the_sum_of_each_users() -> None:
    # What every device sends adds up to what a fit on all of them gives: the federation is a sum.
    log = synthetic_split().train
    group = log.select(log.user_ids % 7 == 0)
    released_counts = fitted(log).item_counts
    for statistics_round, name in ((1, "item_counts"), (2, "cooccurrence")):
        def fit(part: InteractionLog, statistics_round: int = statistics_round, name: str = name) -> torch.Tensor:
            model = build_model("item_knn", CatalogInfo(n_users=log.n_users, n_items=log.n_items), {"window": 3})
            model.item_counts.copy_(released_counts)
            model.fit_statistics_round(part, statistics_round)
            return getattr(model, name)
        total = sum(fit(log.select(log.user_ids == user)) for user in range(0, log.n_users, 7))
        torch.testing.assert_close(total, fit(group), rtol=1e-5, atol=1e-6)


def test_each_later_round_adds_the_devices_table_again_and_the_scorer_averages_the_releases() -> None:
    log = synthetic_split().train
    once, five_times = fitted(log, pair_releases=1), fitted(log, pair_releases=5)
    torch.testing.assert_close(five_times.cooccurrence, 5 * once.cooccurrence)
    users = np.arange(log.n_users)
    torch.testing.assert_close(five_times.score(users, log), once.score(users, log))
    # A device given the global model after round 3 sends its own table again: its update has norm 1.
    device = log.select(log.user_ids == 4)
    model = build_model("item_knn", CatalogInfo(n_users=log.n_users, n_items=log.n_items), {"pair_releases": 5})
    model.load_state_dict(five_times.state_dict())
    received = model.cooccurrence.clone()
    model.fit_statistics_round(device, 4)
    assert norm(model.cooccurrence - received) == pytest.approx(1.0, abs=1e-5)
    assert model.released_arrays(4) == ("cooccurrence",)


def test_the_neighbourhood_is_the_most_counted_items_ties_to_the_lower_id() -> None:
    model = build_model("item_knn", CatalogInfo(n_users=1, n_items=6), {"neighbourhood_items": 3})
    model.item_counts.copy_(torch.tensor([1.0, 5.0, 2.0, 5.0, -1.0, 2.0]))
    assert model.neighbourhood().tolist() == [1, 3, 2]
    assert model.cooccurrence.shape == (3, 3)


def test_recent_distinct_items_come_most_recent_first() -> None:
    assert _recent_distinct(np.array([5, 1, 5, 2, 1, 7]), 3).tolist() == [7, 1, 2]
    assert _recent_distinct(np.array([5, 1, 5]), 10).tolist() == [5, 1]


def test_the_recent_items_neighbours_rank_first_and_rare_items_fall_back_to_the_prior() -> None:
    # Users 1-5 all had item 0 next to item 1; item 9 is popular but never next to 0.
    rows = [(user, item, time) for user in range(1, 6) for time, item in enumerate([0, 1])]
    rows += [(user, 9, 0) for user in range(6, 12)]
    rows += [(0, 0, 0)]
    log = make_log(rows, n_users=12, n_items=10)
    model = fitted(log, window=1, min_item_weight=0.01)
    scores = model.score(np.array([0]), log)[0]
    assert bool(scores[1] > scores[9])
    # Raising the floor above every item's weight leaves the prior alone: items by count.
    prior_only = fitted(log, window=1, min_item_weight=100.0).score(np.array([0]), log)[0]
    assert int(torch.argmax(prior_only)) in (0, 9) and bool(prior_only[9] > prior_only[1])


def test_beats_popularity_on_synthetic_data() -> None:
    _, result = train("item_knn", synthetic_split(), {"window": 10, "min_item_weight": 0.5})
    assert result.test["full/ndcg@10"] > popularity_ndcg()


@pytest.mark.parametrize("options, key", [
    ({"neighbourhood_items": 0}, "model.neighbourhood_items"),
    ({"recency_decay": 0.0}, "model.recency_decay"),
    ({"history_length": 0}, "model.history_length"),
    ({"min_item_weight": float("nan")}, "model.min_item_weight"),
])
def test_bad_options_name_their_key(options: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        build_model("item_knn", CatalogInfo(n_users=1, n_items=5), options)


def test_the_noise_on_a_released_table_is_estimated_from_its_negative_entries() -> None:
    generator = np.random.default_rng(5)
    # Sparse, heavy-tailed, non-negative: like co-occurrence sums.
    sparse = generator.random((300, 300)) < 0.2
    exact = torch.from_numpy(np.abs(generator.standard_cauchy((300, 300))).clip(0, 50) * sparse)
    assert estimated_noise_std(exact) == 0.0
    for sigma in (0.5, 2.0):
        released = exact + torch.from_numpy(generator.normal(0, sigma, exact.shape))
        assert estimated_noise_std(released) == pytest.approx(sigma, rel=0.1)


def test_more_noise_leaves_fewer_items_voting_and_the_prior_ranks_the_rest() -> None:
    model = fitted(synthetic_split().train)
    exact = model.item_weight_threshold()
    assert exact == model.config.min_item_weight
    model.cooccurrence.add_(torch.from_numpy(np.random.default_rng(6).normal(0, 5.0, model.cooccurrence.shape))
                            .float())
    # The buffer sums pair_releases tables, and each pair's two copies are averaged: the noise on the mean
    # table has std 5 / (pair_releases * sqrt(2)).
    expected = model.config.noise_threshold * 5.0 / (model.config.pair_releases * np.sqrt(2))
    assert model.item_weight_threshold() == pytest.approx(expected, rel=0.1)


def test_the_two_noisy_copies_of_each_pair_are_averaged() -> None:
    model = fitted(synthetic_split().train, pair_releases=1)
    exact = model.cooccurrence.clone()
    assert torch.equal(model.symmetrised_cooccurrence(), exact)  # the exact table is symmetric already
    noise = torch.from_numpy(np.random.default_rng(7).normal(0, 1.0, exact.shape)).float()
    model.cooccurrence.add_(noise)
    off_diagonal = ~torch.eye(len(exact), dtype=torch.bool)
    error = (model.symmetrised_cooccurrence() - exact)[off_diagonal]
    assert float(error.std()) == pytest.approx(1 / np.sqrt(2), rel=0.05)
    similarities = model._similarities()
    assert torch.equal(similarities.sign(), similarities.T.sign())  # a pair votes both ways or neither


def test_pair_entries_within_the_noise_are_shrunk_to_zero() -> None:
    model = build_model("item_knn", CatalogInfo(n_users=1, n_items=3), {"neighbourhood_items": 3,
                                                                         "min_item_weight": 0.0,
                                                                         "noise_threshold": 0.0,
                                                                         "similarity_exponent": 0.5,
                                                                         "pair_noise_threshold": 2.0})
    # The one negative entry, -1, says the noise has std 1: entries within 2 of zero are noise.
    table = torch.tensor([[9.0, 1.5, 5.0], [1.5, 4.0, -1.0], [5.0, -1.0, 16.0]])
    model.cooccurrence.copy_(table)
    similarities = model._similarities()
    assert similarities[0, 1] == 0 and similarities[1, 2] == 0
    # 5 shrunk by 2 is 3, over sqrt(9) * sqrt(16).
    assert float(similarities[0, 2]) == pytest.approx(3.0 / 3.0 / 4.0)
