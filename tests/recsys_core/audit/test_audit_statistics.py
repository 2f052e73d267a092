"""Audit statistics: exact intervals, the one-run epsilon lower bound, and membership-inference metrics."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import stats

from recsys_core.audit.statistics import (
    EPSILON_TOLERANCE,
    GuessResult,
    best_guess_epsilon_lower_bound,
    chance_precision,
    clopper_pearson,
    one_run_epsilon_lower_bound,
    one_run_p_value,
    precision_recall,
    roc_auc,
    tpr_at_fpr,
)


def logit(probability: float) -> float:
    return math.log(probability / (1.0 - probability))


# ---------------------------------------------------------------- Clopper-Pearson


@pytest.mark.parametrize(
    ("successes", "trials", "expected"),
    [
        # 0/10: upper solves (1-p)^10 = 0.025; 10/10 is its mirror image.
        (0, 10, (0.0, 1.0 - 0.025 ** (1 / 10))),
        (10, 10, (0.025 ** (1 / 10), 1.0)),
        (5, 10, (0.187086, 0.812914)),
    ],
)
def test_clopper_pearson_known_values(successes: int, trials: int, expected: tuple[float, float]) -> None:
    lower, upper = clopper_pearson(successes, trials)
    assert lower == pytest.approx(expected[0], abs=1e-6)
    assert upper == pytest.approx(expected[1], abs=1e-6)


def test_clopper_pearson_zero_of_ten_literal() -> None:
    assert clopper_pearson(0, 10) == pytest.approx((0.0, 0.3084971), abs=1e-7)
    assert clopper_pearson(10, 10) == pytest.approx((0.6915029, 1.0), abs=1e-7)


@pytest.mark.parametrize(("successes", "trials", "confidence"), [(3, 17, 0.95), (40, 50, 0.99), (1, 200, 0.9)])
def test_clopper_pearson_matches_scipy_exact_interval(successes: int, trials: int, confidence: float) -> None:
    reference = stats.binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="exact")
    assert clopper_pearson(successes, trials, confidence) == pytest.approx((reference.low, reference.high), abs=1e-9)


def test_clopper_pearson_ends_have_the_stated_tail_probability() -> None:
    # At the lower bound, P[X >= x] is exactly a/2; at the upper bound, P[X <= x] is a/2.
    lower, upper = clopper_pearson(7, 20, confidence=0.9)
    assert stats.binom.sf(6, 20, lower) == pytest.approx(0.05, abs=1e-9)
    assert stats.binom.cdf(7, 20, upper) == pytest.approx(0.05, abs=1e-9)


@pytest.mark.parametrize(
    ("successes", "trials", "confidence", "message"),
    [
        (1, 0, 0.95, "trials must be positive"),
        (11, 10, 0.95, "cannot exceed trials"),
        (-1, 10, 0.95, "non-negative"),
        (1, 10, 1.0, "confidence"),
        (1, 10, float("nan"), "confidence"),
        (1.5, 10, 0.95, "integer"),
    ],
)
def test_clopper_pearson_rejects_bad_input(successes: int, trials: int, confidence: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        clopper_pearson(successes, trials, confidence)


# ---------------------------------------------------------------- one-run p-value


@pytest.mark.parametrize(("guesses", "correct", "epsilon"), [(100, 80, 1.0), (1000, 560, 0.2), (50, 50, 3.0)])
def test_pure_dp_p_value_is_the_binomial_tail(guesses: int, correct: int, epsilon: float) -> None:
    accuracy = math.exp(epsilon) / (1.0 + math.exp(epsilon))
    expected = stats.binom.sf(correct - 1, guesses, accuracy)
    assert one_run_p_value(1000, guesses, correct, epsilon, 0.0) == pytest.approx(expected, rel=1e-12)


def test_approximate_dp_p_value_matches_the_formula_term_by_term() -> None:
    canaries, guesses, correct, epsilon, delta = 500, 60, 45, 0.7, 1e-5
    accuracy = math.exp(epsilon) / (1.0 + math.exp(epsilon))
    binomial = stats.binom(guesses, accuracy)
    # Written the slow way, over i = 1..m as in the paper, to check that stopping at v loses nothing.
    shortfall = max(
        sum(binomial.pmf(k) for k in range(max(correct - i, 0), correct)) / i for i in range(1, canaries + 1)
    )
    expected = binomial.sf(correct - 1) + 2 * canaries * delta * shortfall
    assert one_run_p_value(canaries, guesses, correct, epsilon, delta) == pytest.approx(expected, rel=1e-9)


def test_p_value_increases_with_epsilon_and_with_delta() -> None:
    epsilons = [0.0, 0.25, 0.5, 1.0, 2.0]
    for delta in (0.0, 1e-6, 1e-4):
        values = [one_run_p_value(1000, 100, 80, epsilon, delta) for epsilon in epsilons]
        assert values == sorted(values)
        assert values[0] < values[-1]
    for epsilon in epsilons[:-1]:
        by_delta = [one_run_p_value(1000, 100, 80, epsilon, delta) for delta in (0.0, 1e-6, 1e-4)]
        assert by_delta[0] < by_delta[1] < by_delta[2]


def test_p_value_is_clipped_to_one_and_trivial_without_correct_guesses() -> None:
    assert one_run_p_value(1000, 100, 80, 0.0, 0.5) == 1.0
    assert one_run_p_value(1000, 100, 0, 0.0, 0.0) == 1.0
    assert one_run_p_value(1000, 0, 0, 1.0, 1e-5) == 1.0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((10, 11, 5, 1.0, 0.0), "cannot exceed canaries"),
        ((10, 5, 6, 1.0, 0.0), "cannot exceed guesses"),
        ((10, 5, 5, -1.0, 0.0), "epsilon"),
        ((10, 5, 5, math.inf, 0.0), "epsilon"),
        ((10, 5, 5, 1.0, 1.5), "delta"),
        ((0, 0, 0, 1.0, 0.0), "canaries must be positive"),
    ],
)
def test_p_value_rejects_bad_input(arguments: tuple[int, int, int, float, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        one_run_p_value(*arguments)


# ---------------------------------------------------------------- one-run epsilon lower bound


def test_all_of_a_thousand_correct_gives_the_closed_form_bound() -> None:
    # q^1000 = 0.05 is where the pure-DP p-value of 1000/1000 crosses 5%.
    expected = logit(0.05 ** (1 / 1000))
    bound = one_run_epsilon_lower_bound(1000, 1000, 1000, delta=0.0, confidence=0.95)
    assert bound == pytest.approx(expected, abs=1e-4)
    assert bound <= expected


def test_bound_is_zero_at_chance_level() -> None:
    assert one_run_epsilon_lower_bound(1000, 1000, 500, delta=0.0) == 0.0
    assert one_run_epsilon_lower_bound(1000, 1000, 500, delta=1e-5) == 0.0
    assert one_run_epsilon_lower_bound(1000, 0, 0, delta=0.0) == 0.0


def test_bound_grows_with_correct_guesses_and_is_positive_for_perfect_guessing() -> None:
    bounds = [one_run_epsilon_lower_bound(1000, 200, correct, delta=1e-5) for correct in (120, 140, 170, 200)]
    assert bounds[0] > 0.0
    assert bounds == sorted(bounds)
    assert len(set(bounds)) == len(bounds)


def test_bound_shrinks_with_delta_and_with_confidence() -> None:
    by_delta = [one_run_epsilon_lower_bound(1000, 1000, 1000, delta) for delta in (0.0, 1e-5, 1e-3)]
    assert by_delta[0] > by_delta[1] > by_delta[2] > 0.0
    by_confidence = [one_run_epsilon_lower_bound(1000, 300, 250, 1e-5, confidence) for confidence in (0.9, 0.95, 0.99)]
    assert by_confidence[0] > by_confidence[1] > by_confidence[2] > 0.0


@pytest.mark.parametrize("delta", [0.0, 1e-5, 1e-3])
def test_bound_sits_at_the_rejection_boundary(delta: float) -> None:
    bound = one_run_epsilon_lower_bound(1000, 300, 250, delta, confidence=0.95)
    assert one_run_p_value(1000, 300, 250, bound, delta) < 0.05
    assert one_run_p_value(1000, 300, 250, bound + 2 * EPSILON_TOLERANCE, delta) >= 0.05


def test_bound_is_zero_when_the_delta_term_alone_exceeds_the_significance() -> None:
    # Even 1000 of 1000 correct: at epsilon 0 the tail is 2^-1000, but the delta term is about 0.18.
    assert one_run_p_value(1000, 1000, 1000, 0.0, 0.05) > 0.05
    assert one_run_epsilon_lower_bound(1000, 1000, 1000, delta=0.05) == 0.0


# ---------------------------------------------------------------- best-guess procedure


def balanced_inclusion(canaries: int, seed: int) -> np.ndarray:
    included = np.zeros(canaries, dtype=bool)
    included[: canaries // 2] = True
    return np.random.default_rng(seed).permutation(included)


@pytest.mark.parametrize("delta", [0.0, 1e-5])
def test_perfect_separation_never_beats_the_formula(delta: float) -> None:
    included = balanced_inclusion(1000, seed=1)
    scores = included + np.random.default_rng(2).uniform(0.0, 0.5, size=1000)
    result = best_guess_epsilon_lower_bound(scores, included, delta=delta)
    assert isinstance(result, GuessResult)
    # Every canary guessed right is the best any attack can do; the bound for it is the ceiling.
    ceiling = one_run_epsilon_lower_bound(1000, 1000, 1000, delta=delta, confidence=0.95)
    assert 0.0 < result.epsilon_lower_bound < ceiling
    # With exactly half included, the largest symmetric setting is all correct and wins, at the
    # Bonferroni-corrected confidence.
    assert (result.positive_guesses, result.negative_guesses) == (500, 500)
    assert (result.guesses, result.correct, result.canaries) == (1000, 1000, 1000)
    corrected = 1.0 - 0.05 / result.settings_tried
    assert result.epsilon_lower_bound == one_run_epsilon_lower_bound(1000, 1000, 1000, delta, corrected)
    assert result.settings_tried > 1
    assert (result.confidence, result.delta) == (0.95, delta)


def test_best_guess_counts_correct_guesses_on_a_small_example() -> None:
    # Ten canaries, so the only guess count is 5: settings (5, 5) and (5, 0).
    scores = np.arange(10, 0, -1, dtype=float)
    included = np.array([1, 1, 1, 0, 1, 0, 1, 0, 0, 0], dtype=bool)
    result = best_guess_epsilon_lower_bound(scores, included, delta=0.0, confidence=0.5)
    assert result.settings_tried == 2
    # (5, 5): top five hold four members, bottom five hold four non-members.
    assert (result.positive_guesses, result.negative_guesses, result.correct) == (5, 5, 8)
    assert result.epsilon_lower_bound == one_run_epsilon_lower_bound(10, 10, 8, 0.0, confidence=0.75)


def test_best_guess_is_zero_for_uninformative_scores() -> None:
    rng = np.random.default_rng(3)
    result = best_guess_epsilon_lower_bound(rng.normal(size=1000), rng.random(1000) < 0.5, delta=1e-5)
    assert result.epsilon_lower_bound == 0.0


def test_best_guess_rarely_overstates_the_epsilon_of_randomized_response() -> None:
    # Scores from 1-DP randomized response of each inclusion bit: the procedure must not claim
    # epsilon > 1 more often than its 5% failure rate allows, and should still find some leak.
    epsilon = 1.0
    rng = np.random.default_rng(4)
    bounds = []
    for _ in range(100):
        included = rng.random(100) < 0.5
        truthful = rng.random(100) < math.exp(epsilon) / (1.0 + math.exp(epsilon))
        scores = np.where(truthful, included, ~included).astype(float)
        bounds.append(best_guess_epsilon_lower_bound(scores, included, delta=0.0).epsilon_lower_bound)
    assert np.mean(np.array(bounds) > epsilon) <= 0.05
    assert np.median(bounds) > 0.2


@pytest.mark.parametrize(
    ("scores", "included", "message"),
    [
        (np.zeros(5), np.zeros(4, dtype=bool), "same length"),
        (np.array([0.0, np.nan]), np.array([True, False]), "finite"),
        (np.zeros(2), np.array([0, 2]), "booleans"),
        (np.zeros(1), np.array([True]), "at least 2"),
    ],
)
def test_best_guess_rejects_bad_input(scores: np.ndarray, included: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        best_guess_epsilon_lower_bound(scores, included, delta=0.0)


# ---------------------------------------------------------------- membership-inference metrics


def test_auc_is_one_half_for_identical_distributions() -> None:
    rng = np.random.default_rng(5)
    assert roc_auc(rng.normal(size=20_000), rng.normal(size=20_000)) == pytest.approx(0.5, abs=0.01)
    assert roc_auc(np.ones(7), np.ones(3)) == 0.5


def test_auc_is_one_for_separated_and_zero_for_reversed_scores() -> None:
    assert roc_auc(np.array([5.0, 6.0, 7.0]), np.array([1.0, 2.0])) == 1.0
    assert roc_auc(np.array([1.0, 2.0]), np.array([5.0, 6.0, 7.0])) == 0.0


def test_auc_equals_brute_force_pair_count_with_half_ties() -> None:
    members = np.array([0.9, 0.4, 0.4, 0.7, 0.1])
    nonmembers = np.array([0.4, 0.2, 0.7, 0.05])
    pairs = [(1.0 if m > n else 0.5 if m == n else 0.0) for m in members for n in nonmembers]
    assert roc_auc(members, nonmembers) == pytest.approx(sum(pairs) / len(pairs), abs=1e-12)
    # By hand: 0.9 wins 4; each 0.4 wins 2 and ties 1; 0.7 wins 3 and ties 1; 0.1 wins 1: (12 + 1.5) / 20.
    assert roc_auc(members, nonmembers) == pytest.approx(13.5 / 20)


def test_tpr_at_fpr_on_a_hand_example() -> None:
    members = np.array([0.95, 0.9, 0.8, 0.6, 0.3])
    nonmembers = np.array([0.85, 0.7, 0.5, 0.4, 0.2])
    # FPR 0: only above 0.85, members 0.95 and 0.9.
    assert tpr_at_fpr(members, nonmembers, 0.0) == pytest.approx(2 / 5)
    # FPR <= 0.2 allows one false positive (0.85): flag above 0.7, members down to 0.8.
    assert tpr_at_fpr(members, nonmembers, 0.2) == pytest.approx(3 / 5)
    assert tpr_at_fpr(members, nonmembers, 0.39) == pytest.approx(3 / 5)
    assert tpr_at_fpr(members, nonmembers, 0.4) == pytest.approx(4 / 5)
    assert tpr_at_fpr(members, nonmembers, 1.0) == 1.0


def test_tpr_at_fpr_does_not_flag_a_member_tied_with_a_nonmember_at_the_threshold() -> None:
    # Flagging 0.5 would flag the non-member at 0.5 too, an FPR of 1/2.
    assert tpr_at_fpr(np.array([1.0, 0.5]), np.array([0.5, 0.1]), 0.0) == pytest.approx(1 / 2)


def test_tpr_at_fpr_with_too_few_nonmembers_means_above_every_nonmember() -> None:
    members = np.array([3.0, 2.0, 1.0, 0.5])
    nonmembers = np.array([1.5, 0.0, 0.2])
    # 3 non-members cannot resolve FPR 1%: the threshold sits above the highest one.
    assert tpr_at_fpr(members, nonmembers, 0.01) == pytest.approx(2 / 4)


def test_tpr_at_fpr_tolerates_rounding_of_the_allowed_false_positives() -> None:
    # 0.29 * 100 is 28.999999999999996 in floating point; 29 false positives are still allowed.
    nonmembers = np.arange(100, dtype=float)
    members = np.array([70.5, 71.5])
    assert tpr_at_fpr(members, nonmembers, 0.29) == 1.0


def test_tpr_at_fpr_rejects_bad_fpr() -> None:
    with pytest.raises(ValueError, match="fpr"):
        tpr_at_fpr(np.ones(3), np.ones(3), 1.5)
    with pytest.raises(ValueError, match="non-empty"):
        roc_auc(np.ones(3), np.array([]))


# ---------------------------------------------------------------- set-valued attacks


def test_precision_recall_on_a_small_example() -> None:
    assert precision_recall({1, 2, 3, 4}, {2, 4, 6}) == pytest.approx((2 / 4, 2 / 3))
    assert precision_recall(np.array([1, 2, 2, 3, 4]), np.array([6, 4, 2])) == pytest.approx((2 / 4, 2 / 3))
    assert precision_recall(set(), {1}) == (0.0, 0.0)


def test_precision_recall_rejects_empty_actual_and_non_integers() -> None:
    with pytest.raises(ValueError, match="actual must not be empty"):
        precision_recall({1}, set())
    with pytest.raises(ValueError, match="integer"):
        precision_recall(np.array([1.5]), {1})
    floats: list[Any] = [1.5]
    with pytest.raises(ValueError, match="integers"):
        precision_recall(floats, {1})


def test_chance_precision() -> None:
    assert chance_precision(25, 100) == 0.25
    assert chance_precision(0, 10) == 0.0
    with pytest.raises(ValueError, match="cannot exceed"):
        chance_precision(11, 10)
    with pytest.raises(ValueError, match="positive"):
        chance_precision(0, 0)
