"""The in-memory interaction log every loader produces and every model consumes.

Ids are contiguous integers (``0 .. n_users-1``, ``0 .. n_items-1``); the
:class:`IdMap` of each side keeps the original ids so that results map back to
what the dataset called its users and items.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class IdMap:
    """Maps contiguous internal ids to the dataset's original ids.

    ``original_ids[i]`` is the original id of internal id ``i``. Original ids
    may be integers or strings (a numpy ``object``/unicode array).
    """

    original_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.original_ids)

    @cached_property
    def _lookup(self) -> dict[object, int]:
        return {original: index for index, original in enumerate(self.original_ids.tolist())}

    def to_original(self, internal_ids: np.ndarray | list[int]) -> np.ndarray:
        """Original ids of the given internal ids."""
        return self.original_ids[np.asarray(internal_ids, dtype=np.int64)]

    def to_internal(self, original_ids: np.ndarray | list[object]) -> np.ndarray:
        """Internal ids of the given original ids; raises ``KeyError`` naming an unknown id."""
        lookup = self._lookup
        values = np.asarray(original_ids).tolist()
        try:
            return np.fromiter((lookup[value] for value in values), dtype=np.int64, count=len(values))
        except KeyError as error:
            raise KeyError(f"unknown original id {error.args[0]!r}") from None

    def subset(self, kept_internal_ids: np.ndarray) -> IdMap:
        """The map after keeping only ``kept_internal_ids`` (renumbered in the given order)."""
        return IdMap(self.original_ids[np.asarray(kept_internal_ids, dtype=np.int64)])

    @staticmethod
    def from_values(values: np.ndarray) -> tuple[IdMap, np.ndarray]:
        """Builds a map from raw id values; returns it and the internal id of every value.

        Internal ids follow the sorted order of the original ids, so the mapping is
        the same whatever order the file lists its rows in.
        """
        unique, inverse = np.unique(np.asarray(values), return_inverse=True)
        return IdMap(unique), inverse.astype(np.int64).reshape(-1)


@dataclass(frozen=True)
class ItemFeatures:
    """Dense content features of every item, e.g. genre indicators and a scaled year."""

    values: np.ndarray  # float32 [n_items, n_features]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.values.shape[1] != len(self.names):
            raise ValueError(
                f"item feature matrix has shape {self.values.shape} but {len(self.names)} names"
            )

    def subset(self, kept_item_ids: np.ndarray) -> ItemFeatures:
        return ItemFeatures(self.values[np.asarray(kept_item_ids, dtype=np.int64)], self.names)


@dataclass(frozen=True)
class InteractionLog:
    """Columnar interactions sorted by user, then timestamp, then file order.

    ``ratings`` holds explicit ratings when the source has them. ``weights``
    holds each interaction's implicit feedback weight (a play count, after
    ``data.preprocessing.weight_transform``) when the source maps a weight column;
    models that read it (:attr:`~recsys_core.models.base.Recommender.uses_interaction_weights`)
    weight the interaction's loss by it, the others count every row once.
    ``timestamps`` are seconds, or the position in the user's sequence when
    the source only gives an order (Amazon sequential format).
    """

    user_ids: np.ndarray  # int64 [n]
    item_ids: np.ndarray  # int64 [n]
    timestamps: np.ndarray  # int64 [n]
    ratings: np.ndarray | None  # float32 [n]
    user_map: IdMap
    item_map: IdMap
    name: str = "interactions"
    item_features: ItemFeatures | None = None
    item_titles: np.ndarray | None = field(default=None, compare=False)
    weights: np.ndarray | None = field(default=None, compare=False)  # float32 [n]

    @classmethod
    def from_arrays(
        cls,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        timestamps: np.ndarray,
        ratings: np.ndarray | None,
        user_map: IdMap,
        item_map: IdMap,
        name: str = "interactions",
        item_features: ItemFeatures | None = None,
        item_titles: np.ndarray | None = None,
        weights: np.ndarray | None = None,
    ) -> InteractionLog:
        """Sorts the rows by (user, timestamp, original order) and builds the log."""
        user_ids = np.asarray(user_ids, dtype=np.int64)
        item_ids = np.asarray(item_ids, dtype=np.int64)
        timestamps = np.asarray(timestamps, dtype=np.int64)
        order = np.lexsort((np.arange(len(user_ids)), timestamps, user_ids))
        return cls(
            user_ids=user_ids[order],
            item_ids=item_ids[order],
            timestamps=timestamps[order],
            ratings=None if ratings is None else np.asarray(ratings, dtype=np.float32)[order],
            user_map=user_map,
            item_map=item_map,
            name=name,
            item_features=item_features,
            item_titles=item_titles,
            weights=None if weights is None else np.asarray(weights, dtype=np.float32)[order],
        )

    @classmethod
    def from_original_ids(
        cls,
        users: np.ndarray,
        items: np.ndarray,
        timestamps: np.ndarray | None = None,
        ratings: np.ndarray | None = None,
        name: str = "interactions",
        weights: np.ndarray | None = None,
    ) -> InteractionLog:
        """Builds a log from original ids, remapping both sides to contiguous ids."""
        user_map, user_ids = IdMap.from_values(users)
        item_map, item_ids = IdMap.from_values(items)
        if timestamps is None:
            timestamps = np.zeros(len(user_ids), dtype=np.int64)
        return cls.from_arrays(user_ids, item_ids, timestamps, ratings, user_map, item_map, name, weights=weights)

    @property
    def n_users(self) -> int:
        return len(self.user_map)

    @property
    def n_items(self) -> int:
        return len(self.item_map)

    @property
    def n_interactions(self) -> int:
        return len(self.user_ids)

    @cached_property
    def user_offsets(self) -> np.ndarray:
        """CSR offsets: the rows of user ``u`` are ``user_offsets[u]:user_offsets[u+1]``."""
        counts = np.bincount(self.user_ids, minlength=self.n_users)
        offsets = np.zeros(self.n_users + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return offsets

    def items_of(self, user: int) -> np.ndarray:
        """The user's items in chronological order."""
        start, end = self.user_offsets[user], self.user_offsets[user + 1]
        return self.item_ids[start:end]

    def select(self, mask: np.ndarray) -> InteractionLog:
        """The rows where ``mask`` holds, keeping every id (no renumbering)."""
        return InteractionLog(
            user_ids=self.user_ids[mask],
            item_ids=self.item_ids[mask],
            timestamps=self.timestamps[mask],
            ratings=None if self.ratings is None else self.ratings[mask],
            user_map=self.user_map,
            item_map=self.item_map,
            name=self.name,
            item_features=self.item_features,
            item_titles=self.item_titles,
            weights=None if self.weights is None else self.weights[mask],
        )

    def summary(self) -> dict[str, float | int | str]:
        """Counts a user wants to see first: users, items, interactions, density."""
        cells = max(self.n_users * self.n_items, 1)
        return {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.n_interactions,
            "density": self.n_interactions / cells,
            "has_ratings": self.ratings is not None,
            "has_weights": self.weights is not None,
            "item_features": 0 if self.item_features is None else len(self.item_features.names),
        }
