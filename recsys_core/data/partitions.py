"""Splitting an interaction log into federated clients.

* ``users_per_device = 1`` is the cross-device setting: client ``i`` is user ``i``.
* ``users_per_device = N > 1`` is the cross-silo setting: a seeded shuffle of the users
  is cut into consecutive groups of ``N`` (the last group may be smaller).

A :class:`ClientPartitioner` computes the assignment once; each
:meth:`ClientPartitioner.partition` call then costs time proportional to the rows of
that client's users only, which matters when a simulation touches a few clients per
round out of many thousands. The caller keeps the partitioner; nothing is cached
at module level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys_core.data.interactions import InteractionLog
from recsys_core.errors import ConfigError


@dataclass(frozen=True)
class PartitionConfig:
    """How users are grouped into clients; ``seed`` only matters when grouping."""

    users_per_device: int = 1
    seed: int = 0

    def validate(self) -> None:
        """Raises :class:`ConfigError` naming the first invalid field."""
        for name, minimum in (("users_per_device", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
            if value < minimum:
                raise ConfigError(f"{name} must be >= {minimum}, got {value}")


class ClientPartitioner:
    """The user -> client assignment of one log, and each client's slice of it.

    Every user of the log (``0 .. n_users-1``) belongs to exactly one partition,
    including users without rows; their partition may then be empty.
    """

    def __init__(self, log: InteractionLog, config: PartitionConfig) -> None:
        config.validate()
        self._log = log
        self.config = config
        self._users, self._offsets = _assign(log.n_users, config)
        self._assignment = np.empty(log.n_users, dtype=np.int64)
        self._assignment[self._users] = np.repeat(
            np.arange(self.num_partitions, dtype=np.int64), np.diff(self._offsets)
        )
        for array in (self._users, self._offsets, self._assignment):
            array.setflags(write=False)

    @property
    def log(self) -> InteractionLog:
        """The full log being partitioned."""
        return self._log

    @property
    def num_partitions(self) -> int:
        """How many clients there are."""
        return len(self._offsets) - 1

    @property
    def assignment(self) -> np.ndarray:
        """Read-only ``[n_users]`` array: the partition id of every user."""
        return self._assignment

    def users_of(self, partition_id: int) -> np.ndarray:
        """Read-only, ascending internal user ids of one partition."""
        index = self._check(partition_id)
        return self._users[self._offsets[index] : self._offsets[index + 1]]

    def partition(self, partition_id: int) -> InteractionLog:
        """The rows of the partition's users, with global ids, maps and item features.

        Costs time proportional to those rows: it reads the log's CSR user offsets
        instead of scanning every row.
        """
        return rows_of_users(self._log, self.users_of(partition_id))

    def _check(self, partition_id: int) -> int:
        if isinstance(partition_id, bool) or not isinstance(partition_id, int | np.integer):
            raise ConfigError(f"partition id must be an integer, got {partition_id!r}")
        if not 0 <= partition_id < self.num_partitions:
            raise ConfigError(
                f"partition id {partition_id} is out of range: valid ids are "
                f"0 .. {self.num_partitions - 1}"
                if self.num_partitions
                else f"partition id {partition_id} is out of range: the log has no users"
            )
        return int(partition_id)


def _assign(n_users: int, config: PartitionConfig) -> tuple[np.ndarray, np.ndarray]:
    """Users grouped by partition (ascending within each) and the CSR group offsets."""
    size = config.users_per_device
    offsets = np.minimum(np.arange(0, n_users + size, size, dtype=np.int64), n_users)
    if size == 1:
        return np.arange(n_users, dtype=np.int64), offsets
    shuffled = np.random.default_rng(config.seed).permutation(n_users).astype(np.int64)
    group = np.arange(n_users) // size
    # Ascending users within a group keep a partition's rows in the log's user order.
    return shuffled[np.lexsort((shuffled, group))], offsets


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, e) for s, e in zip(starts, ends)])`` without the loop."""
    lengths = ends - starts
    total = int(lengths.sum())
    # Each position's value is its start plus its rank within its own range.
    first_position = np.cumsum(lengths) - lengths
    return np.repeat(starts - first_position, lengths) + np.arange(total, dtype=np.int64)


def localize_users(log: InteractionLog, users: np.ndarray) -> InteractionLog:
    """The device's view of its own rows: its users renumbered ``0..len(users)-1``.

    ``log`` must hold rows of ``users`` only (e.g. :meth:`ClientPartitioner.partition`);
    ``users`` must be sorted. Item ids stay global, so scores cover the whole catalogue,
    and the user map still names the original users.
    """
    users = np.asarray(users, dtype=np.int64)
    return InteractionLog(
        user_ids=np.searchsorted(users, log.user_ids).astype(np.int64),
        item_ids=log.item_ids,
        timestamps=log.timestamps,
        ratings=log.ratings,
        user_map=log.user_map.subset(users),
        item_map=log.item_map,
        name=log.name,
        item_features=log.item_features,
        item_titles=log.item_titles,
        weights=log.weights,
    )


def rows_of_users(log: InteractionLog, users: np.ndarray) -> InteractionLog:
    """The rows of ``users`` in ``log`` (global ids kept), read through the CSR offsets.

    Works on any log over the same users, e.g. each part of a train/valid/test split.
    """
    users = np.asarray(users, dtype=np.int64)
    offsets = log.user_offsets
    rows = _ranges(offsets[users], offsets[users + 1])
    return InteractionLog(
        user_ids=log.user_ids[rows],
        item_ids=log.item_ids[rows],
        timestamps=log.timestamps[rows],
        ratings=None if log.ratings is None else log.ratings[rows],
        user_map=log.user_map,
        item_map=log.item_map,
        name=log.name,
        item_features=log.item_features,
        item_titles=log.item_titles,
        weights=None if log.weights is None else log.weights[rows],
    )
