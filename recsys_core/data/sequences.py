"""Fixed-length item sequences for sequence models (SASRec, GRU4Rec, Caser)."""

from __future__ import annotations

import numpy as np

from recsys_core.data.interactions import InteractionLog

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
