"""Splits hold out the right rows and leak nothing into training."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_core.data.interactions import InteractionLog
from recsys_core.data.splits import SplitConfig, split_log
from recsys_core.data.synthetic import SyntheticConfig, generate_synthetic
from recsys_core.errors import ConfigError


def rows(log: InteractionLog) -> set[tuple[int, int, int]]:
    return set(zip(log.user_ids.tolist(), log.item_ids.tolist(), log.timestamps.tolist()))


def test_leave_one_out_takes_last_and_second_to_last(tiny_log: InteractionLog) -> None:
    split = split_log(tiny_log, SplitConfig())
    user_10 = int(tiny_log.user_map.to_internal([10])[0])
    item = tiny_log.item_map.to_original
    # User 10's timeline by timestamp: 2 (t1), 4 (t2), 3 (t3), 5 (t4), 1 (t5).
    assert item(split.test.items_of(user_10)).tolist() == [1]
    assert item(split.valid.items_of(user_10)).tolist() == [5]
    assert item(split.train.items_of(user_10)).tolist() == [2, 4, 3]
    # User 30 has only two interactions: it trains on both and is not evaluated.
    user_30 = int(tiny_log.user_map.to_internal([30])[0])
    assert len(split.test.items_of(user_30)) == 0
    assert len(split.train.items_of(user_30)) == 2


def test_parts_partition_the_log(tiny_log: InteractionLog) -> None:
    for config in (SplitConfig(), SplitConfig(method="random_holdout", test_fraction=0.3, seed=3)):
        split = split_log(tiny_log, config)
        parts = [rows(split.train), rows(split.valid), rows(split.test)]
        assert sum(map(len, parts)) == tiny_log.n_interactions
        assert set.union(*parts) == rows(tiny_log)
        assert not (parts[0] & parts[2]) and not (parts[0] & parts[1]) and not (parts[1] & parts[2])


@pytest.mark.parametrize("method", ["leave_one_out", "random_holdout"])
def test_no_test_item_in_training(method: str) -> None:
    log = generate_synthetic(SyntheticConfig(n_users=300, n_items=200, seed=1))
    split = split_log(log, SplitConfig(method=method, seed=5))
    train_pairs = set(zip(split.train.user_ids.tolist(), split.train.item_ids.tolist()))
    test_pairs = set(zip(split.test.user_ids.tolist(), split.test.item_ids.tolist()))
    assert test_pairs and not (train_pairs & test_pairs)
    if method == "leave_one_out":
        # Every held-out item is at least as late as everything the user trained on.
        last_train = np.maximum.reduceat(split.train.timestamps, split.train.user_offsets[:-1])
        assert np.all(split.test.timestamps >= last_train[split.test.user_ids])


def test_random_holdout_is_seeded(tiny_log: InteractionLog) -> None:
    first = split_log(tiny_log, SplitConfig(method="random_holdout", seed=1))
    again = split_log(tiny_log, SplitConfig(method="random_holdout", seed=1))
    assert rows(first.test) == rows(again.test)


def test_history_before_test_includes_validation(tiny_log: InteractionLog) -> None:
    split = split_log(tiny_log, SplitConfig())
    history = split.history_before("test")
    assert history.n_interactions == split.train.n_interactions + split.valid.n_interactions


def test_invalid_split_config() -> None:
    with pytest.raises(ConfigError, match="split.method"):
        SplitConfig(method="by_moon_phase").validate()  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="test_fraction"):
        SplitConfig(test_fraction=1.5).validate()
