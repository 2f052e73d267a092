"""Statistics for empirical privacy audits: confidence intervals, one-run epsilon lower bounds, attack metrics.

- :func:`clopper_pearson`: exact binomial confidence interval of an attack's success rate.
- :func:`one_run_p_value`, :func:`one_run_epsilon_lower_bound`, :func:`best_guess_epsilon_lower_bound`:
  the one-run audit of Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training Run"
  (NeurIPS 2023, arXiv:2305.08846), which turns guesses about randomly included canaries into a
  statistically valid lower bound on the epsilon of the training run.
- :func:`roc_auc`, :func:`tpr_at_fpr`: membership-inference metrics (higher score means "member").
- :func:`precision_recall`, :func:`chance_precision`: set-valued attacks against what random guessing achieves.

A lower bound here is evidence that a run leaks *at least* this much; it never certifies that a
run is private. Only the accountant's upper bound does that.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

#: Bisection stops once the bracket around the epsilon lower bound is this narrow.
EPSILON_TOLERANCE = 1e-6

#: Doublings of the upper end of the epsilon bracket before giving up; 2**64 is far past any epsilon
#: at which the binomial tail is still below a sensible significance level.
_MAX_BRACKET_DOUBLINGS = 64


def _check_confidence(confidence: float) -> None:
    # NaN fails every comparison, hence "not (good)" rather than "bad".
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _check_delta(delta: float) -> None:
    if not 0 <= delta <= 1:
        raise ValueError(f"delta must be in [0, 1], got {delta}")


def _check_count(name: str, value: int) -> int:
    try:
        count = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if count < 0:
        raise ValueError(f"{name} must be non-negative, got {count}")
    return count


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial confidence interval ``(lower, upper)`` for a success probability.

    Clopper-Pearson inverts two one-sided binomial tests, so the interval covers the true rate with
    probability at least ``confidence`` for every rate and sample size: it never undercovers, which
    is what an audit needs when it reports an attack's accuracy on a few dozen canaries. The bounds
    are beta quantiles: ``lower = Beta(a/2; x, n-x+1)`` and ``upper = Beta(1-a/2; x+1, n-x)`` with
    ``a = 1 - confidence``; ``lower`` is 0 when ``x = 0`` and ``upper`` is 1 when ``x = n``.
    """
    successes = _check_count("successes", successes)
    trials = _check_count("trials", trials)
    if trials == 0:
        raise ValueError("trials must be positive: there is no interval for zero trials")
    if successes > trials:
        raise ValueError(f"successes ({successes}) cannot exceed trials ({trials})")
    _check_confidence(confidence)
    tail = (1.0 - confidence) / 2.0
    lower = 0.0 if successes == 0 else float(stats.beta.ppf(tail, successes, trials - successes + 1))
    upper = 1.0 if successes == trials else float(stats.beta.ppf(1.0 - tail, successes + 1, trials - successes))
    return lower, upper


def _check_guess_counts(canaries: int, guesses: int, correct: int) -> tuple[int, int, int]:
    canaries = _check_count("canaries", canaries)
    guesses = _check_count("guesses", guesses)
    correct = _check_count("correct", correct)
    if canaries == 0:
        raise ValueError("canaries must be positive")
    if guesses > canaries:
        raise ValueError(f"guesses ({guesses}) cannot exceed canaries ({canaries})")
    if correct > guesses:
        raise ValueError(f"correct ({correct}) cannot exceed guesses ({guesses})")
    return canaries, guesses, correct


def one_run_p_value(canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """Upper bound on the chance that an (epsilon, delta)-DP run lets an auditor get ``correct`` or more right.

    Setting (Steinke, Nasr & Jagielski 2023): ``m = canaries`` canaries, each included in training
    independently with probability 1/2; after training the auditor guesses "in" or "out" for
    ``r = guesses`` of them and abstains on the rest; ``v = correct`` guesses are right. With
    ``q = e^eps / (1 + e^eps)``, the accuracy of eps-DP randomized response, and ``W ~ Binomial(r, q)``:

    - pure DP (``delta = 0``, their Theorem 3.1): ``p = P[W >= v]``;
    - approximate DP (their Corollary 5.4 / Appendix D):
      ``p = P[W >= v] + 2 m delta max_{i=1..v} P[v - i <= W < v] / i``, clipped to 1.

    The paper takes the maximum over ``i = 1..m``; for ``i >= v`` the numerator stops growing
    (it is ``P[W < v]``) while ``i`` does, so the maximum is attained at some ``i <= v``.
    A p-value below ``1 - confidence`` rejects "the run is (epsilon, delta)-DP" at that confidence.
    """
    canaries, guesses, correct = _check_guess_counts(canaries, guesses, correct)
    if not (epsilon >= 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be finite and non-negative, got {epsilon}")
    _check_delta(delta)
    accuracy = float(special.expit(epsilon))
    tail = float(stats.binom.sf(correct - 1, guesses, accuracy))
    if delta == 0 or correct == 0:
        return min(tail, 1.0)
    # Masses of W = v-1, v-2, ..., 0; their running sums are P[v - i <= W < v] for i = 1..v.
    masses = stats.binom.pmf(np.arange(correct - 1, -1, -1), guesses, accuracy)
    shortfall = np.cumsum(masses) / np.arange(1, correct + 1)
    return min(tail + 2.0 * canaries * delta * float(shortfall.max()), 1.0)


def _largest_rejected_epsilon(p_value: Callable[[float], float], significance: float) -> float:
    """Bisection for the largest epsilon whose p-value is below ``significance``; 0.0 if epsilon=0 is not rejected.

    The invariant is ``p_value(low) < significance``, so the returned value is always rejected
    itself. That is all validity needs: a run that is not (eps, delta)-DP is not (eps', delta)-DP
    for any eps' < eps either, so even where the p-value is not monotone in epsilon (the delta
    term can dip) the answer is a valid lower bound, at worst not the largest one.
    """
    if p_value(0.0) >= significance:
        return 0.0
    low, high = 0.0, 1.0
    for _ in range(_MAX_BRACKET_DOUBLINGS):
        if p_value(high) >= significance:
            break
        low, high = high, 2.0 * high
    else:
        raise RuntimeError(f"no epsilon up to {high} has a p-value of at least {significance}")
    while high - low > EPSILON_TOLERANCE:
        middle = (low + high) / 2.0
        if p_value(middle) < significance:
            low = middle
        else:
            high = middle
    return low


def one_run_epsilon_lower_bound(
    canaries: int, guesses: int, correct: int, delta: float, confidence: float = 0.95
) -> float:
    """Empirical epsilon lower bound at ``confidence`` from one run: ``correct`` of ``guesses`` right on ``canaries``.

    It is the largest epsilon (to within :data:`EPSILON_TOLERANCE`, rounded down) whose
    :func:`one_run_p_value` is still below ``1 - confidence``: with probability at least
    ``confidence`` over the canary inclusion, a run that is (epsilon, delta)-DP would not have
    produced this many correct guesses. It is 0.0 when even epsilon = 0 is not rejected,
    for example at chance-level accuracy. ``guesses`` and ``correct`` must be fixed before
    looking at the outcome; see :func:`best_guess_epsilon_lower_bound` for choosing them from scores.
    """
    canaries, guesses, correct = _check_guess_counts(canaries, guesses, correct)
    _check_delta(delta)
    _check_confidence(confidence)

    def p_value(epsilon: float) -> float:
        return one_run_p_value(canaries, guesses, correct, epsilon, delta)

    return _largest_rejected_epsilon(p_value, 1.0 - confidence)


@dataclass(frozen=True)
class GuessResult:
    """The best one-run epsilon lower bound over the guess settings tried, and the setting that gave it."""

    epsilon_lower_bound: float
    guesses: int
    correct: int
    canaries: int
    #: Canaries guessed "included": the highest-scoring ones.
    positive_guesses: int
    #: Canaries guessed "excluded": the lowest-scoring ones.
    negative_guesses: int
    #: Family-wise confidence over all settings tried (each was tested at a Bonferroni-corrected level).
    confidence: float
    delta: float
    settings_tried: int


def _guess_counts(canaries: int) -> list[int]:
    """Guess counts 5, 10, 20, 50, 100, ... up to half the canaries, and half the canaries itself."""
    half = canaries // 2
    counts = {half}
    scale = 1
    while 5 * scale <= half:
        counts.update(step * scale for step in (5, 10, 20) if step * scale <= half)
        scale *= 10
    return sorted(count for count in counts if count > 0)


def _guess_settings(canaries: int) -> list[tuple[int, int]]:
    """(positive, negative) guess counts: symmetric top-k/bottom-k, and top-k only."""
    settings: list[tuple[int, int]] = []
    for count in _guess_counts(canaries):
        settings.extend([(count, count), (count, 0)])
    return settings


def best_guess_epsilon_lower_bound(
    scores: np.ndarray, included: np.ndarray, delta: float, confidence: float = 0.95
) -> GuessResult:
    """The auditor's one-run procedure: guess from ranked canary scores, keep the best Bonferroni-corrected bound.

    ``scores[j]`` is the attack's score for canary ``j`` (higher means "more likely included") and
    ``included[j]`` whether it really was in training, each independently with probability 1/2.
    Canaries are ranked by score (ties broken by index, which is independent of inclusion); a
    setting ``(k+, k-)`` guesses "included" for the top ``k+`` and "excluded" for the bottom ``k-``
    and abstains on the rest. The settings are ``(k, k)`` and ``(k, 0)`` for ``k`` in
    5, 10, 20, 50, ... up to ``m // 2`` and ``m // 2`` itself.

    Reporting the maximum over settings is a multiple comparison: each setting alone fails with
    probability ``1 - confidence``, so the best of ``S`` of them could fail ``S`` times as often.
    Each setting is therefore tested at significance ``(1 - confidence) / S`` (Bonferroni), which
    makes the returned maximum a valid lower bound at the stated ``confidence`` overall, at the
    price of being a little lower than any single pre-registered setting would give.
    """
    score_values = np.asarray(scores, dtype=float)
    membership = np.asarray(included)
    if score_values.ndim != 1 or membership.shape != score_values.shape:
        raise ValueError(
            f"scores and included must be 1-D arrays of the same length, got shapes "
            f"{score_values.shape} and {membership.shape}"
        )
    if not np.all(np.isfinite(score_values)):
        raise ValueError("scores must be finite")
    if not np.isin(membership, (0, 1)).all():
        raise ValueError("included must hold only booleans (or 0 and 1)")
    canaries = score_values.size
    if canaries < 2:
        raise ValueError(f"need at least 2 canaries to guess both ways, got {canaries}")
    _check_delta(delta)
    _check_confidence(confidence)

    # Stable sort on the negated scores: highest first, equal scores in index order.
    ranked_membership = membership.astype(bool)[np.argsort(-score_values, kind="stable")]
    settings = _guess_settings(canaries)
    setting_confidence = 1.0 - (1.0 - confidence) / len(settings)
    best: GuessResult | None = None
    for positive, negative in settings:
        true_positives = int(ranked_membership[:positive].sum())
        true_negatives = negative - int(ranked_membership[canaries - negative :].sum())
        correct = true_positives + true_negatives
        guesses = positive + negative
        bound = one_run_epsilon_lower_bound(canaries, guesses, correct, delta, setting_confidence)
        if best is None or bound > best.epsilon_lower_bound:
            best = GuessResult(
                epsilon_lower_bound=bound,
                guesses=guesses,
                correct=correct,
                canaries=canaries,
                positive_guesses=positive,
                negative_guesses=negative,
                confidence=confidence,
                delta=delta,
                settings_tried=len(settings),
            )
    assert best is not None  # canaries >= 2, so there is at least the (1, 1) setting
    return best


def _check_scores(name: str, scores: np.ndarray) -> np.ndarray:
    values = np.asarray(scores, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} must be finite")
    return values


def roc_auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """Area under the ROC curve of a membership-inference attack (higher score means "member").

    It is the Mann-Whitney statistic: the probability that a random member outscores a random
    non-member, a tie counting one half (mid-ranks), so an attack that scores everyone alike gets
    exactly 0.5 rather than a value that depends on how ties happen to be ordered.
    """
    members = _check_scores("member_scores", member_scores)
    nonmembers = _check_scores("nonmember_scores", nonmember_scores)
    ranks = stats.rankdata(np.concatenate([members, nonmembers]))
    member_rank_sum = float(ranks[: members.size].sum())
    pairs_won = member_rank_sum - members.size * (members.size + 1) / 2.0
    return pairs_won / (members.size * nonmembers.size)


def tpr_at_fpr(member_scores: np.ndarray, nonmember_scores: np.ndarray, fpr: float) -> float:
    """Largest true-positive rate over thresholds ("member" when score > threshold) with false-positive rate <= ``fpr``.

    Low-FPR TPR is what matters for membership inference: an attack that is confident about a
    few users is a real leak even when its AUC is near 0.5. With ``n`` non-members the achievable
    false-positive rates are multiples of ``1/n``; with fewer than ``1/fpr`` non-members the only
    threshold with FPR <= ``fpr`` is "above every non-member", so the result is the fraction of
    members scoring strictly above the highest non-member. Such a number says little about the
    attack at that FPR; audit with at least a few times ``1/fpr`` non-members.
    """
    members = _check_scores("member_scores", member_scores)
    nonmembers = _check_scores("nonmember_scores", nonmember_scores)
    if not 0 <= fpr <= 1:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    # The tolerance keeps e.g. 0.29 * 100 = 28.999999999999996 from losing the 29th false positive.
    allowed_false_positives = math.floor(fpr * nonmembers.size + 1e-9)
    if allowed_false_positives >= nonmembers.size:
        return 1.0
    # Flagging only scores above the (allowed + 1)-th highest non-member score keeps at most
    # `allowed` false positives; any lower threshold would flag at least one more non-member.
    threshold = np.sort(nonmembers)[::-1][allowed_false_positives]
    return float(np.mean(members > threshold))


def _as_id_set(name: str, values: Iterable[int] | np.ndarray) -> set[int]:
    if isinstance(values, np.ndarray):
        if values.ndim != 1 or not (values.size == 0 or np.issubdtype(values.dtype, np.integer)):
            raise ValueError(f"{name} must be a 1-D integer array, got dtype {values.dtype} and shape {values.shape}")
        return {int(value) for value in values}
    try:
        return {operator.index(value) for value in values}
    except TypeError:
        raise ValueError(f"{name} must contain only integers") from None


def precision_recall(guessed: Iterable[int] | np.ndarray, actual: Iterable[int] | np.ndarray) -> tuple[float, float]:
    """Precision and recall of a set-valued attack: ids it ``guessed`` against the ``actual`` ones.

    Duplicates count once. Precision is 0.0 when nothing was guessed (the attack found nothing);
    an empty ``actual`` is an error, because then there is nothing to recall and no attack can beat
    chance (see :func:`chance_precision`).
    """
    guessed_ids = _as_id_set("guessed", guessed)
    actual_ids = _as_id_set("actual", actual)
    if not actual_ids:
        raise ValueError("actual must not be empty: recall is undefined")
    hits = len(guessed_ids & actual_ids)
    precision = hits / len(guessed_ids) if guessed_ids else 0.0
    return precision, hits / len(actual_ids)


def chance_precision(actual_size: int, universe_size: int) -> float:
    """Expected precision of guessing uniformly at random from ``universe_size`` ids, ``actual_size`` of them actual.

    Every guess hits with probability ``actual_size / universe_size`` however many guesses are made,
    so this is the baseline an attack's precision must beat before it shows any leak.
    """
    actual_size = _check_count("actual_size", actual_size)
    universe_size = _check_count("universe_size", universe_size)
    if universe_size == 0:
        raise ValueError("universe_size must be positive")
    if actual_size > universe_size:
        raise ValueError(f"actual_size ({actual_size}) cannot exceed universe_size ({universe_size})")
    return actual_size / universe_size
