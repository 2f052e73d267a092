"""Sampling items a user has not interacted with (training negatives, sampled evaluation)."""

from __future__ import annotations

import numpy as np

from recsys_core.data.interactions import InteractionLog


class SeenItems:
    """A set of (user, item) pairs with a vectorised membership test."""

    def __init__(self, user_ids: np.ndarray, item_ids: np.ndarray, n_items: int) -> None:
        self.n_items = n_items
        self._keys = np.unique(np.asarray(user_ids, np.int64) * n_items + np.asarray(item_ids, np.int64))

    @classmethod
    def from_logs(cls, *logs: InteractionLog) -> SeenItems:
        """Every (user, item) pair that occurs in any of ``logs`` (all over the same ids)."""
        users = np.concatenate([log.user_ids for log in logs])
        items = np.concatenate([log.item_ids for log in logs])
        return cls(users, items, logs[0].n_items)

    def users_with_every_item(self) -> np.ndarray:
        """The users who have seen the whole catalogue: no item is left to draw as their negative."""
        counts = np.bincount(self._keys // max(self.n_items, 1))
        return np.flatnonzero(counts >= self.n_items)

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Boolean array: is ``(users[i], items[i])`` a seen pair? Shapes broadcast."""
        keys = np.asarray(users, np.int64) * self.n_items + np.asarray(items, np.int64)
        if len(self._keys) == 0:
            return np.zeros(keys.shape, dtype=bool)
        positions = np.searchsorted(self._keys, keys).clip(max=len(self._keys) - 1)
        return self._keys[positions] == keys


def sample_unseen_items(
    users: np.ndarray,
    samples_per_user: int,
    seen: SeenItems,
    generator: np.random.Generator,
    max_rounds: int = 100,
) -> np.ndarray:
    """Draws ``samples_per_user`` items per user, uniformly among items the user has not seen.

    Rejection sampling over the whole batch at once; draws are with replacement,
    as in the NCF and SASRec reference protocols. Returns ``int64 [len(users), samples_per_user]``.
    Raises ``ValueError`` when a user has seen every item.
    """
    users = np.asarray(users, dtype=np.int64)
    samples = generator.integers(0, seen.n_items, size=(len(users), samples_per_user))
    row_users = np.broadcast_to(users[:, None], samples.shape)
    rejected = seen.contains(row_users, samples)
    for _ in range(max_rounds):
        count = int(rejected.sum())
        if count == 0:
            return samples
        samples[rejected] = generator.integers(0, seen.n_items, size=count)
        rejected[rejected] = seen.contains(row_users[rejected], samples[rejected])
    # Users who have seen nearly the whole catalogue: sample from their complement exactly.
    for row in np.flatnonzero(rejected.any(axis=1)):
        candidates = np.flatnonzero(~seen.contains(np.full(seen.n_items, users[row]), np.arange(seen.n_items)))
        if len(candidates) == 0:
            raise ValueError(f"user {users[row]} has interacted with every item; no negative exists")
        bad = rejected[row]
        samples[row, bad] = generator.choice(candidates, size=int(bad.sum()))
    return samples
