"""Item-set inference: guess which items a user interacted with from a model update.

A recommender's item tables are indexed by item: an embedding row, an output row, a
bias. Local training on one user's items moves the rows of those items (and of the
negatives sampled against them) and leaves every other row exactly where it was.

Two guesses are scored against the user's true training items:

- **touched**: every row that moved at all (norm above a tiny relative threshold);
- **top-k**: rows ranked along the update's principal direction, with ``k`` the user's
  true number of items (an attacker told the count; then precision equals recall).
  One user's positives all move one way (towards that user's vector) and the negatives
  sampled against them the other way, so the touched rows split in two along the first
  singular vector of their update matrix. Negatives outnumber positives
  (``negatives_per_positive`` per positive per epoch), so the smaller side is guessed
  to be the positives. Ranking by movement alone does little better than chance: an
  Adam step moves every touched row by about the learning rate.

Chance is the precision of ``k`` rows drawn uniformly: ``k / n_items``. Against a
securely aggregated update the same guesses are made on the sum the server sees and
scored against each member of the sum in turn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from recsys_core.audit.statistics import chance_precision, precision_recall

#: A row "moved" if its update norm exceeds this fraction of the largest row's (float32 noise floor).
TOUCHED_RELATIVE_THRESHOLD = 1e-6


def item_rows(update: Mapping[str, np.ndarray], n_items: int) -> np.ndarray:
    """``[n_items, width]``: every item-indexed table of ``update`` side by side, one row per item.

    A table is item-indexed when its first dimension is the catalogue size and its name
    says ``item`` (so a hidden layer that happens to be as wide is not mistaken for one).
    """
    tables = [np.asarray(array, dtype=np.float64).reshape(n_items, -1) for name, array in update.items()
              if "item" in name and np.ndim(array) >= 1 and np.shape(array)[0] == n_items]
    return np.concatenate(tables, axis=1) if tables else np.zeros((n_items, 0))


@dataclass(frozen=True)
class ItemSetGuess:
    """The attack's scores against one user's true items."""

    true_items: int
    touched_precision: float
    touched_recall: float
    top_k_precision: float
    chance_precision: float
    #: Precision of the ``k`` rows that moved furthest along the mean direction (:func:`largest_movement_scores`).
    largest_k_precision: float = float("nan")


def summed(updates: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The sum of several updates (float64): what a server sees of them under secure aggregation."""
    return {name: sum((np.asarray(update[name], dtype=np.float64) for update in updates[1:]),
                      np.asarray(updates[0][name], dtype=np.float64)) for name in updates[0]}


def touched_rows(rows: np.ndarray) -> np.ndarray:
    """Ids of the rows that moved at all (norm above a tiny fraction of the largest row's)."""
    movement = np.linalg.norm(rows, axis=1)
    largest = float(movement.max(initial=0.0))
    if largest == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(movement > TOUCHED_RELATIVE_THRESHOLD * largest)


def positive_side_scores(rows: np.ndarray, touched: np.ndarray) -> np.ndarray:
    """``[n_items]``: each touched row's projection on the principal direction, signed so the smaller
    side (the guessed positives) scores high, or, when every row moved the same way, the largest
    movement; untouched rows score minus infinity."""
    scores = np.full(len(rows), -np.inf)
    if len(touched) == 0:
        return scores
    _, _, directions = np.linalg.svd(rows[touched], full_matrices=False)
    projection = rows[touched] @ directions[0]
    positive, negative = int((projection > 0).sum()), int((projection < 0).sum())
    # Two sides: the smaller one is the positives. One side only (a count vector moves every row
    # one way): every touched row is a positive, the largest movement first.
    if (positive and negative and positive > negative) or not positive:
        projection = -projection
    scores[touched] = projection
    return scores


def attack_update(rows: np.ndarray, true_items: np.ndarray) -> ItemSetGuess:
    """Guesses a user's items from an update's item rows (:func:`item_rows`) and scores both guesses."""
    true_items = np.unique(np.asarray(true_items, dtype=np.int64))
    n_items = len(rows)
    touched = touched_rows(rows)
    k = len(true_items)
    # A stable order makes ties (untouched rows) break by item id, the same on every run.
    top_k = np.argsort(-positive_side_scores(rows, touched), kind="stable")[:k]
    largest_k = np.argsort(-largest_movement_scores(rows), kind="stable")[:k]
    touched_precision, touched_recall = precision_recall(touched, true_items)
    top_k_precision, _ = precision_recall(top_k, true_items)
    largest_k_precision, _ = precision_recall(largest_k, true_items)
    return ItemSetGuess(k, touched_precision, touched_recall, top_k_precision, chance_precision(k, n_items),
                        largest_k_precision)


def largest_movement_scores(rows: np.ndarray) -> np.ndarray:
    """``[n_items]``: each row's movement along the update's mean row direction.

    The guess for an update whose rows all move one way, a count vector above all:
    its largest entries are the user's items, and under noise the principal split of
    :func:`positive_side_scores` can pick the noise's side instead.
    """
    direction = rows.sum(axis=0)
    norm = float(np.linalg.norm(direction))
    return rows @ (direction / norm) if norm > 0 else np.zeros(len(rows))


@dataclass(frozen=True)
class ItemSetSummary:
    """Mean scores over the attacked users."""

    users: int
    touched_precision: float
    touched_recall: float
    top_k_precision: float
    chance_precision: float
    largest_k_precision: float = float("nan")

    @property
    def top_k_over_chance(self) -> float:
        return self.top_k_precision / self.chance_precision if self.chance_precision > 0 else float("nan")


def summarise(guesses: list[ItemSetGuess]) -> ItemSetSummary:
    def mean(name: str) -> float:
        return float(np.mean([getattr(guess, name) for guess in guesses])) if guesses else float("nan")

    return ItemSetSummary(len(guesses), mean("touched_precision"), mean("touched_recall"), mean("top_k_precision"),
                          mean("chance_precision"), mean("largest_k_precision"))
