"""Fixed-length item sequences for sequence models (SASRec, GRU4Rec, Caser)."""

from __future__ import annotations

import numpy as np

from recsys_core.data.interactions import InteractionLog
from recsys_core.data.sampling import SeenItems, sample_unseen_items

PADDING_ITEM = 0
"""Sequence models shift item ids by one so that 0 can mean 'no item'."""


def recent_item_sequences(log: InteractionLog, users: np.ndarray, length: int) -> np.ndarray:
    """The last ``length`` items of each user, oldest first, left-padded.

    Returns ``int64 [len(users), length]`` holding item id + 1, and
    :data:`PADDING_ITEM` where a user has fewer than ``length`` items.
    """
    users = np.asarray(users, dtype=np.int64)
    ends = log.user_offsets[users + 1]
    starts = np.maximum(log.user_offsets[users], ends - length)
    lengths = ends - starts
    column = np.arange(length)
    valid = column[None, :] >= (length - lengths)[:, None]
    index = starts[:, None] + column[None, :] - (length - lengths)[:, None]
    if log.n_interactions == 0:
        return np.zeros((len(users), length), dtype=np.int64)
    index = np.clip(index, 0, log.n_interactions - 1)
    return np.where(valid, log.item_ids[index] + 1, PADDING_ITEM).astype(np.int64)


def next_item_samples(
    log: InteractionLog, length: int, generator: np.random.Generator
) -> dict[str, np.ndarray]:
    """One next-item training sample per user with at least two items (SASRec, GRU4Rec).

    ``sequences`` holds the user's last ``length`` inputs, ``positives`` the item that
    follows each input, and ``negatives`` one unseen item per position (padding where
    the input is padding). All ``int64 [users, length]``, item ids shifted by one.
    """
    users = np.flatnonzero(np.diff(log.user_offsets) >= 2)
    window = recent_item_sequences(log, users, length + 1)
    inputs, positives = window[:, :-1], window[:, 1:]
    negatives = sample_unseen_items(users, length, SeenItems.from_logs(log), generator) + 1
    negatives = np.where(inputs != PADDING_ITEM, negatives, PADDING_ITEM)
    return {
        "sequences": np.ascontiguousarray(inputs),
        "positives": np.ascontiguousarray(positives),
        "negatives": np.ascontiguousarray(negatives),
    }
