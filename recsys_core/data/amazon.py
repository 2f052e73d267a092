"""Loader for the sequential Amazon review format (e.g. ``Beauty.txt``).

Each line is ``user item item ...``, whitespace-separated, with the user's items
in chronological order. The format has no ratings, timestamps or item features:
the timestamp of an interaction is its position in the user's sequence
(0, 1, 2, ...).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recsys_core.data.interactions import IdMap, InteractionLog
from recsys_core.data.parsing import Field, iter_text_chunks, parse_column
from recsys_core.errors import DataFormatError

_USER = Field("user", "id", "user id")
_ITEM = Field("item", "id", "item id")


def load_amazon_sequences(
    path: str | Path, name: str = "amazon", encoding: str = "utf-8"
) -> InteractionLog:
    """Reads one line per user (``user item item ...``); ids may be integers or strings."""
    path = Path(path)
    users, items, lengths, numbers = _read_sequences(path, encoding)
    user_values = parse_column(users, _USER, path, np.asarray(numbers, dtype=np.int64))
    item_lines = np.repeat(np.asarray(numbers, dtype=np.int64), lengths)
    item_values = parse_column(items, _ITEM, path, item_lines)
    _check_one_line_per_user(path, user_values, numbers)
    lengths_array = np.asarray(lengths, dtype=np.int64)
    starts = np.cumsum(lengths_array) - lengths_array
    positions = np.arange(len(item_values), dtype=np.int64) - np.repeat(starts, lengths_array)
    user_map, user_ids = IdMap.from_values(user_values)
    item_map, item_ids = IdMap.from_values(item_values)
    return InteractionLog.from_arrays(
        np.repeat(user_ids, lengths_array),
        item_ids,
        positions,
        None,
        user_map,
        item_map,
        name=name,
    )


def _read_sequences(path: Path, encoding: str) -> tuple[list[str], list[str], list[int], list[int]]:
    """User tokens, all item tokens, items per line and the line of each user."""
    users: list[str] = []
    items: list[str] = []
    lengths: list[int] = []
    numbers: list[int] = []
    for chunk in iter_text_chunks(path, encoding):
        for line, number in zip(chunk.lines, chunk.line_numbers.tolist(), strict=True):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) < 2:
                raise DataFormatError(
                    path,
                    "expected a user id followed by at least one item id (whitespace-separated), "
                    "found 1 field — is the delimiter right?",
                    line=number,
                )
            users.append(tokens[0])
            items.extend(tokens[1:])
            lengths.append(len(tokens) - 1)
            numbers.append(number)
    if not users:
        raise DataFormatError(path, "file is empty", line=1)
    return users, items, lengths, numbers


def _check_one_line_per_user(path: Path, users: np.ndarray, numbers: list[int]) -> None:
    """A user on two lines would have two sequences whose positions collide."""
    order = np.argsort(users, kind="stable")
    same = np.flatnonzero(users[order][1:] == users[order][:-1])
    if len(same):
        first, second = int(order[same[0]]), int(order[same[0] + 1])
        raise DataFormatError(
            path,
            f"user {users[first]} appears on lines {numbers[first]} and {numbers[second]}; "
            "the sequential format has one line per user",
            line=numbers[second],
        )
