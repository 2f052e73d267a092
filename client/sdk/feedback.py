"""Feedback kinds and how much each one says the user likes an item.

A device turns its raw feedback into training data: every event has a weight (by its
kind, or from its value for ratings), an item's weights add up, and an item whose sum
reaches ``positive_threshold`` is a positive interaction of the user, ordered by the
time it became one. Items with a negative sum (skipped more than liked) are never
recommended again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

FeedbackKind = Literal["view", "click", "favourite", "add-to-cart", "purchase", "rating", "skip"]
FEEDBACK_KINDS: tuple[str, ...] = get_args(FeedbackKind)


@dataclass(frozen=True)
class FeedbackWeights:
    """The weight of each kind of feedback; a rating weighs ``value - rating_midpoint``."""

    view: float = 0.25
    click: float = 1.0
    favourite: float = 2.0
    add_to_cart: float = 2.0
    purchase: float = 3.0
    skip: float = -1.0
    rating_midpoint: float = 3.0
    #: An item is a positive once its summed weight reaches this.
    positive_threshold: float = 1.0

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not math.isfinite(value):
                raise ValueError(f"FeedbackWeights.{name}: must be finite, got {value}")
        if self.positive_threshold <= 0:
            raise ValueError(f"FeedbackWeights.positive_threshold: must be positive, got {self.positive_threshold}")

    def weight(self, kind: str, value: float | None = None) -> float:
        """The weight of one event; raises :class:`ValueError` naming a bad kind or value."""
        if kind not in FEEDBACK_KINDS:
            raise ValueError(f"unknown feedback kind {kind!r}; use one of {', '.join(FEEDBACK_KINDS)}")
        if kind == "rating":
            if value is None or not math.isfinite(value):
                raise ValueError("a rating needs a finite value, e.g. record(item, 'rating', value=4)")
            return float(value) - self.rating_midpoint
        if value is not None:
            raise ValueError(f"feedback of kind {kind!r} takes no value (only 'rating' does)")
        return float(getattr(self, kind.replace("-", "_")))
