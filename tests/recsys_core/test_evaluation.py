"""Metrics against values computed by hand."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from recsys_core.data.interactions import IdMap, InteractionLog
from recsys_core.data.sampling import SeenItems
from recsys_core.errors import ConfigError, FedrecError
from recsys_core.evaluation import (
    _sampled_ranking,
    evaluate_ranking,
    metrics_from_ranks,
    paired_difference,
    sample_evaluation_negatives,
)
from recsys_core.metrics import EvaluationConfig, MetricSums, metric_names

SCORES = torch.tensor([[0.1, 0.9, 0.5, 0.3, 0.7]])


def one_user_log(items: list[int], n_items: int = 5) -> InteractionLog:
    return InteractionLog.from_arrays(
        np.zeros(len(items), np.int64), np.array(items, np.int64), np.arange(len(items)), None,
        IdMap(np.array([0])), IdMap(np.arange(n_items)),
    )


def evaluate_one(history: list[int], targets: list[int], cutoffs=(1, 3), scores=SCORES,
                 exclude_history: bool = True) -> dict[str, float]:
    history_log, target_log = one_user_log(history), one_user_log(targets)
    seen = SeenItems.from_logs(history_log, target_log)
    config = EvaluationConfig(cutoffs=cutoffs, sampled_negatives=2, exclude_history=exclude_history)
    return evaluate_ranking(lambda users: scores, target_log, history_log, seen, config).means()


def test_full_ranking_single_target_at_top() -> None:
    # Item 1 (0.9) is history and excluded, so item 4 (0.7) ranks first.
    metrics = evaluate_one(history=[1], targets=[4])
    assert metrics["full/hr@1"] == 1.0
    assert metrics["full/ndcg@1"] == pytest.approx(1.0)
    assert metrics["full/mrr@3"] == pytest.approx(1.0)


def test_a_catalogue_smaller_than_the_largest_cutoff_is_ranked_whole() -> None:
    # Five items and HR@10: every rank is inside the cutoff (torch.topk refused k > 5 before).
    metrics = evaluate_one(history=[1], targets=[0], cutoffs=(1, 10))
    assert metrics["full/hr@10"] == 1.0 and metrics["full/hr@1"] == 0.0


def test_a_user_who_has_seen_every_item_is_one_clear_error() -> None:
    seen = SeenItems.from_logs(one_user_log([0, 1, 2, 3, 4]))
    with pytest.raises(FedrecError, match="user 7 has interacted with all 5 items of the catalogue"):
        sample_evaluation_negatives(np.array([0]), seen, 3, seed=0, seed_keys=np.array([7]))


def test_full_ranking_single_target_third() -> None:
    # Remaining order: 4 (0.7), 2 (0.5), 3 (0.3), 0 (0.1): item 3 has rank 2 (0-based).
    metrics = evaluate_one(history=[1], targets=[3])
    assert metrics["full/hr@1"] == 0.0
    assert metrics["full/hr@3"] == 1.0
    assert metrics["full/ndcg@3"] == pytest.approx(1 / math.log2(4))
    assert metrics["full/mrr@3"] == pytest.approx(1 / 3)
    assert metrics["full/recall@3"] == 1.0


def test_full_ranking_over_all_items_keeps_history_in_the_ranking() -> None:
    # Ranking every item: 1 (0.9) stays in front of the target 4 (0.7), which is second.
    metrics = evaluate_one(history=[1], targets=[4], exclude_history=False)
    assert metrics["full/hr@1"] == 0.0
    assert metrics["full/ndcg@3"] == pytest.approx(1 / math.log2(3))


def test_full_ranking_two_targets() -> None:
    # Targets 2 and 0 sit at ranks 1 and 3; only the first is inside the top 3.
    metrics = evaluate_one(history=[1], targets=[2, 0])
    ideal = 1 + 1 / math.log2(3)
    assert metrics["full/hr@3"] == 1.0
    assert metrics["full/recall@3"] == pytest.approx(0.5)
    assert metrics["full/ndcg@3"] == pytest.approx((1 / math.log2(3)) / ideal)
    assert metrics["full/mrr@3"] == pytest.approx(0.5)


def test_ties_count_against_the_model() -> None:
    constant = torch.ones(1, 5)
    metrics = evaluate_one(history=[1], targets=[4], scores=constant)
    # Four candidates tie, so the target's pessimistic rank is 3: outside the top 3.
    assert metrics["full/hr@3"] == 0.0


def test_coverage_counts_distinct_recommended_items() -> None:
    history = InteractionLog.from_arrays(np.array([0]), np.array([1]), np.array([0]), None,
                                         IdMap(np.array([0, 1])), IdMap(np.arange(5)))
    targets = InteractionLog.from_arrays(np.array([0, 1]), np.array([4, 2]), np.array([1, 1]), None,
                                         IdMap(np.array([0, 1])), IdMap(np.arange(5)))
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3, 0.7], [0.1, 0.9, 0.5, 0.3, 0.7]])
    seen = SeenItems.from_logs(history, targets)
    result = evaluate_ranking(lambda users: scores[users], targets, history, seen,
                              EvaluationConfig(cutoffs=(1,), sampled_negatives=2))
    # User 0 excludes item 1 and gets item 4; user 1 has no history and gets item 1.
    assert result.means()["full/coverage@1"] == pytest.approx(2 / 5)
    assert result.num_users == 2


def test_metric_names_are_the_keys_evaluation_fills() -> None:
    history_log, target_log = one_user_log([0]), one_user_log([2])
    config = EvaluationConfig(cutoffs=(1, 3), sampled_negatives=2)
    sums = evaluate_ranking(lambda users: SCORES, target_log, history_log,
                            SeenItems.from_logs(history_log, target_log), config)
    assert sorted(sums.sums) == metric_names(config)


def test_sampled_ranking_hand_values() -> None:
    scores = torch.tensor([[0.2, 0.9, 0.5, 0.3, 0.7]])
    negatives = torch.tensor([[0, 2, 3]])  # scores 0.2, 0.5, 0.3
    # Target 4 (0.7) beats every negative: rank 0. Target 3 (0.3) loses to 0.5 and ties itself.
    result = _sampled_ranking(scores, negatives, torch.tensor([[4]]), torch.tensor([[True]]), (1, 2, 3))
    assert float(result["hr@1"][0]) == 1.0
    result = _sampled_ranking(scores, negatives, torch.tensor([[1, 0]]), torch.tensor([[True, True]]), (1, 2))
    # Item 1 (0.9): rank 0; item 0 (0.2): rank 1 (0.2 ties itself once in the negatives, 0.5 and 0.3 win)
    assert float(result["hr@1"][0]) == pytest.approx(0.5)


def test_metrics_from_ranks_ndcg_matches_formula() -> None:
    ranks = torch.tensor([[0, 4, 9]])
    mask = torch.tensor([[True, True, False]])
    result = metrics_from_ranks(ranks, mask, (5,))
    expected = (1 / math.log2(2) + 1 / math.log2(6)) / (1 / math.log2(2) + 1 / math.log2(3))
    assert float(result["ndcg@5"][0]) == pytest.approx(expected)
    assert float(result["recall@5"][0]) == 1.0


def test_negatives_are_unseen_and_reproducible() -> None:
    seen = SeenItems(np.array([0, 0, 1]), np.array([1, 2, 3]), n_items=50)
    first = sample_evaluation_negatives(np.array([0, 1]), seen, 40, seed=7)
    again = sample_evaluation_negatives(np.array([1]), seen, 40, seed=7)
    assert first.shape == (2, 40)
    assert not np.isin(first[0], [1, 2]).any() and not np.isin(first[1], [3]).any()
    # A user's negatives do not depend on which other users share the batch.
    np.testing.assert_array_equal(first[1], again[0])


def test_per_user_metrics_are_each_users_own_and_sum_to_the_totals() -> None:
    # User 0 saw item 1 and holds out item 4 (rank 0); user 1 saw nothing and holds out item 3,
    # behind 1, 4 and 2 (rank 3). Batches of one user: the per-user values must not depend on batching.
    def log_of(rows: list[tuple[int, int]]) -> InteractionLog:
        users, items = (np.array(column, np.int64) for column in zip(*rows, strict=True))
        return InteractionLog.from_arrays(users, items, np.arange(len(rows)), None, IdMap(np.arange(2)),
                                          IdMap(np.arange(5)))
    history, targets = log_of([(0, 1)]), log_of([(0, 4), (1, 3)])
    config = EvaluationConfig(cutoffs=(3, 4), sampled_negatives=2, batch_size=1)
    per_user: dict[int, dict[str, float]] = {}
    totals = evaluate_ranking(lambda users: SCORES.expand(len(users), -1), targets, history,
                              SeenItems.from_logs(history, targets), config, per_user)
    assert sorted(per_user) == [0, 1]
    assert per_user[0]["full/ndcg@3"] == pytest.approx(1.0)
    assert per_user[1]["full/ndcg@3"] == 0.0 and per_user[1]["full/ndcg@4"] == pytest.approx(1 / math.log2(5))
    for name, total in totals.sums.items():
        assert per_user[0][name] + per_user[1][name] == pytest.approx(total)


def test_metric_sums_add_like_one_pass() -> None:
    left = MetricSums({"full/hr@10": 1.0}, 2, {10: np.array([1, 0, 0])})
    right = MetricSums({"full/hr@10": 0.0}, 2, {10: np.array([0, 0, 1])})
    total = MetricSums().add(left).add(right)
    assert total.means()["full/hr@10"] == pytest.approx(0.25)
    assert total.means()["full/coverage@10"] == pytest.approx(2 / 3)


def test_invalid_config_is_rejected() -> None:
    with pytest.raises(ConfigError, match="cutoffs"):
        EvaluationConfig(cutoffs=(0,)).validate()


def test_a_paired_difference_sees_a_small_margin_that_noise_between_units_hides() -> None:
    generator = np.random.default_rng(0)
    difficulty = generator.exponential(1.0, size=2000)  # shared by both runs, unit by unit
    better = difficulty + 0.02 + generator.normal(0, 0.01, size=2000)
    result = paired_difference(better, difficulty)
    assert result.units == 2000
    assert result.mean_difference == pytest.approx(0.02, abs=0.002)
    assert result.paired_standard_error == pytest.approx(0.01 / np.sqrt(2000), rel=0.1)
    assert result.z > 50
    assert result.unpaired_standard_error > 100 * result.paired_standard_error
    assert paired_difference(difficulty, better).z == pytest.approx(-result.z)


def test_a_paired_difference_needs_matching_units() -> None:
    with pytest.raises(ValueError, match="same length"):
        paired_difference(np.ones(3), np.ones(4))


# --- several held-out items per user (random_holdout) -------------------------------------------------------------


def brute_force_sampled(scores: np.ndarray, negatives: np.ndarray, targets: list[int], cutoff: int) -> dict[str, float]:
    """The documented sampled protocol, one trial per held-out item, written out item by item."""
    trials = {"hr": [], "ndcg": [], "recall": [], "mrr": []}
    for target in targets:
        rank = sum(1 for negative in negatives if scores[negative] >= scores[target])  # ties count against
        inside = rank < cutoff
        trials["hr"].append(1.0 if inside else 0.0)
        trials["recall"].append(1.0 if inside else 0.0)  # |R| = 1 in a trial
        trials["ndcg"].append(1 / math.log2(rank + 2) if inside else 0.0)  # ideal DCG of one item is 1
        trials["mrr"].append(1 / (rank + 1) if inside else 0.0)
    return {f"sampled/{name}@{cutoff}": sum(values) / len(values) for name, values in trials.items()}


def test_sampled_metrics_with_several_held_out_items_are_finite_and_match_brute_force() -> None:
    # User 0 holds out three items, user 1 one: in one batch user 1's row is padded to three columns.
    n_items = 12
    scores = torch.tensor([[0.05 * item for item in range(n_items)],
                           [1.0 - 0.07 * item for item in range(n_items)]])

    def log_of(rows: list[tuple[int, int]]) -> InteractionLog:
        users, items = (np.array(column, np.int64) for column in zip(*rows, strict=True))
        return InteractionLog.from_arrays(users, items, np.arange(len(rows)), None, IdMap(np.arange(2)),
                                          IdMap(np.arange(n_items)))

    history = log_of([(0, 0), (0, 1), (1, 2)])
    targets = log_of([(0, 9), (0, 4), (0, 6), (1, 3)])
    seen = SeenItems.from_logs(history, targets)
    held_out = {0: [9, 4, 6], 1: [3]}
    cutoffs = (1, 3)
    config = EvaluationConfig(cutoffs=cutoffs, sampled_negatives=5, seed=11)
    negatives = sample_evaluation_negatives(np.array([0, 1]), seen, 5, config.seed)
    per_user: dict[int, dict[str, float]] = {}
    totals = evaluate_ranking(lambda users: scores[torch.from_numpy(users)], targets, history, seen, config, per_user)
    for user in (0, 1):
        for cutoff in cutoffs:
            expected = brute_force_sampled(scores[user].numpy(), negatives[user], held_out[user], cutoff)
            for name, value in expected.items():
                assert per_user[user][name] == pytest.approx(value, abs=1e-12), (user, name)
    assert all(math.isfinite(value) for value in totals.means().values())
    # Batched with padding or one user at a time (as a device does): the same numbers.
    alone = MetricSums()
    for user in (0, 1):
        one_user_targets = log_of([(user, item) for item in held_out[user]])
        alone.add(evaluate_ranking(lambda users: scores[torch.from_numpy(users)], one_user_targets, history, seen,
                                   EvaluationConfig(cutoffs=cutoffs, sampled_negatives=5, seed=11, batch_size=1)))
    for name, value in totals.means().items():
        assert alone.means()[name] == pytest.approx(value, abs=1e-12), name


def test_a_pad_column_is_no_sampled_trial() -> None:
    scores = torch.tensor([[0.2, 0.9, 0.5, 0.3, 0.7], [0.2, 0.9, 0.5, 0.3, 0.7]])
    negatives = torch.tensor([[0, 2, 3], [0, 2, 3]])
    padded = _sampled_ranking(scores, negatives, torch.tensor([[4, 3], [4, 0]]),
                              torch.tensor([[True, True], [True, False]]), (1, 2, 3))
    alone = _sampled_ranking(scores[1:], negatives[1:], torch.tensor([[4]]), torch.tensor([[True]]), (1, 2, 3))
    for name, value in padded.items():
        assert torch.isfinite(value).all(), name
        assert float(value[1]) == float(alone[name][0]), name
    # User 0: target 4 (0.7) ranks 0, NDCG 1; target 3 (0.3) ranks 2 (0.5 wins, 0.3 ties), NDCG@2 0; mean 1/2.
    assert float(padded["ndcg@2"][0]) == 0.5
    assert float(padded["ndcg@3"][0]) == pytest.approx((1 + 1 / math.log2(4)) / 2)


def test_a_user_without_held_out_items_is_not_ranked() -> None:
    with pytest.raises(ValueError, match="at least one held-out item"):
        metrics_from_ranks(torch.tensor([[0], [0]]), torch.tensor([[True], [False]]), (1,))
    with pytest.raises(ValueError, match="at least one held-out item"):
        _sampled_ranking(SCORES, torch.tensor([[0, 2]]), torch.tensor([[4]]), torch.tensor([[False]]), (1,))


def test_a_model_that_scores_nan_is_refused_not_ranked_first() -> None:
    scores = torch.tensor([[0.1, 0.9, float("nan"), 0.3, 0.7]])
    with pytest.raises(FedrecError, match="scored NaN"):
        evaluate_one(history=[1], targets=[2], scores=scores)


def test_central_evaluation_and_device_sums_agree_under_random_holdout() -> None:
    # What fedrec train reports (one central pass) and what fedrec simulate reports (each device's sums,
    # added by the server) on the same split and model. SASRec keeps nothing private on a device, so every
    # device scores with the very model the central pass uses.
    from recsys_core.federated.config import FederatedConfig
    from recsys_core.federated.data import load_federated_data
    from recsys_core.federated.device import evaluate_on_device
    from recsys_core.federated.state import state_to_arrays
    from recsys_core.models import CatalogInfo, build_model
    from recsys_core.training import evaluate_model, seeded

    options = {"hidden_dim": 16, "max_length": 10}
    cfg = FederatedConfig.from_dict({
        "data": {"synthetic": {"n_users": 40, "n_items": 80, "seed": 1}, "split": {"method": "random_holdout"}},
        "model": {"name": "sasrec", "options": options}, "local": {"epochs": 1},
    }).validate()
    data = load_federated_data(cfg.data, cfg.partition)
    assert np.diff(data.split.test.user_offsets).max() > 1  # several held-out items per user
    with seeded(3):
        central = build_model("sasrec", CatalogInfo.from_log(data.split.train), options)
    assert not central.private_state()
    shared = state_to_arrays(central.shared_state())
    seen = SeenItems.from_logs(data.split.train, data.split.valid, data.split.test)
    for part in ("valid", "test"):
        expected = evaluate_model(central, data.split, part, seen, cfg.evaluation).means()
        devices = [evaluate_on_device(cfg, data.device_split(partition), shared, None, part, partition)
                   for partition in range(data.num_devices)]
        measured = functools.reduce(MetricSums.add, devices, MetricSums()).means()
        assert all(math.isfinite(value) for value in expected.values())
        for name, value in expected.items():
            if "coverage" not in name:
                assert measured[name] == pytest.approx(value, abs=1e-9), (part, name)
