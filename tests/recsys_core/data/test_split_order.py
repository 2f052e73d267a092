"""A log without timestamps: ``data.split.method = "auto"`` holds out a random sample and says so."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest

from recsys_core.data.config import DataConfig
from recsys_core.data.interactions import InteractionLog
from recsys_core.data.loading import load_interactions
from recsys_core.data.movielens import load_movielens_100k
from recsys_core.data.splits import (
    DatasetSplit,
    SplitConfig,
    has_time_order,
    resolve_split_method,
    split_log,
)
from recsys_core.data.synthetic import SyntheticConfig, generate_synthetic
from recsys_core.experiment import ExperimentConfig

NOTICE = "has no timestamps"


def sorted_by_item_log(n_users: int = 40, n_items: int = 30) -> InteractionLog:
    """A play-count style log: no timestamp column, every user's rows sorted by item id."""
    generator = np.random.default_rng(0)
    users, items = [], []
    for user in range(n_users):
        chosen = np.sort(generator.choice(n_items, size=10, replace=False))
        users += [user] * len(chosen)
        items += chosen.tolist()
    return InteractionLog.from_original_ids(np.array(users), np.array(items), name="plays")


def digest(split: DatasetSplit) -> str:
    hasher = hashlib.sha256()
    for part in (split.train, split.valid, split.test):
        for column in (part.user_ids, part.item_ids, part.timestamps):
            hasher.update(np.ascontiguousarray(column).tobytes())
    return hasher.hexdigest()[:16]


def same_split(first: DatasetSplit, second: DatasetSplit) -> bool:
    return digest(first) == digest(second)


def notices(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if NOTICE in record.getMessage()]


def test_the_default_method_is_auto() -> None:
    assert SplitConfig().method == "auto"
    assert ExperimentConfig.from_dict({}).data.split.method == "auto"


def test_auto_holds_out_a_random_sample_when_the_log_has_no_timestamps(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = sorted_by_item_log()
    with caplog.at_level(logging.WARNING, logger="fedrec"):
        split = split_log(log, SplitConfig())
    [record] = notices(caplog)
    assert record.name.startswith("fedrec") and record.levelno == logging.WARNING
    message = record.getMessage()
    assert "\n" not in message
    assert "plays" in message and "random_holdout" in message and 'data.split.method = "leave_one_out"' in message
    assert same_split(split, split_log(log, SplitConfig(method="random_holdout")))
    # Not each user's highest item id, which leave-one-out on file order would test.
    last_items = log.item_ids[log.user_offsets[1:] - 1]
    test_items = split.test.item_ids[split.test.user_offsets[1:] - 1]
    assert (test_items != last_items).mean() > 0.5


def test_an_explicit_leave_one_out_keeps_file_order_without_a_notice(caplog: pytest.LogCaptureFixture) -> None:
    log = sorted_by_item_log()
    with caplog.at_level(logging.WARNING, logger="fedrec"):
        split = split_log(log, SplitConfig(method="leave_one_out"))
    assert not notices(caplog)
    np.testing.assert_array_equal(split.test.item_ids, log.item_ids[log.user_offsets[1:] - 1])
    np.testing.assert_array_equal(split.valid.item_ids, log.item_ids[log.user_offsets[1:] - 2])


def test_an_explicit_random_holdout_gives_no_notice(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fedrec"):
        assert resolve_split_method(sorted_by_item_log(), SplitConfig(method="random_holdout")) == "random_holdout"
    assert not notices(caplog)


def test_a_file_without_a_timestamp_column_is_split_at_random(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "plays.csv"
    path.write_text("user,artist\n" + "".join(f"{u},{a}\n" for u in range(5) for a in range(6)))
    data = ExperimentConfig.from_dict(
        {"data": {"dataset": "file", "path": str(path), "columns": {"user": "user", "item": "artist"}}}
    ).data
    log = load_interactions(data)
    with caplog.at_level(logging.WARNING, logger="fedrec"):
        assert resolve_split_method(log, data.split) == "random_holdout"
    assert "plays" in notices(caplog)[0].getMessage()
    explicit = ExperimentConfig.from_dict({"data": {
        "dataset": "file", "path": str(path), "columns": {"user": "user", "item": "artist"},
        "split": {"method": "leave_one_out"},
    }}).data
    assert resolve_split_method(log, explicit.split) == "leave_one_out"


def test_a_file_with_timestamps_keeps_leave_one_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "clicks.csv"
    path.write_text("user,item,ts\n1,a,30\n1,b,10\n1,c,20\n2,a,5\n2,c,7\n2,b,6\n2,d,1\n")
    data = DataConfig(dataset="file", path=str(path), columns={"user": "user", "item": "item", "timestamp": "ts"})
    log = load_interactions(data.validate())
    with caplog.at_level(logging.WARNING, logger="fedrec"):
        split = split_log(log, data.split)
    assert not notices(caplog)
    # The same rows as before "auto" existed: the latest is the test item, the one before the validation item.
    assert sorted(split.test.item_map.to_original(split.test.item_ids).tolist()) == ["a", "c"]
    assert sorted(split.valid.item_map.to_original(split.valid.item_ids).tolist()) == ["b", "c"]
    assert same_split(split, split_log(log, SplitConfig(method="leave_one_out")))


def test_synthetic_data_splits_as_leave_one_out() -> None:
    log = generate_synthetic(SyntheticConfig(n_users=50, n_items=40))
    assert has_time_order(log)
    assert same_split(split_log(log, SplitConfig()), split_log(log, SplitConfig(method="leave_one_out")))


def test_movielens_100k_splits_exactly_as_before(datasets_dir: Path) -> None:
    folder = datasets_dir / "movielens-100k"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    log = load_movielens_100k(folder)
    # Digests of the splits made by the code before the "auto" method (leave-one-out default).
    assert digest(split_log(log, SplitConfig())) == "03741562a7c6bef5"
    assert digest(split_log(log, SplitConfig(method="random_holdout"))) == "800b00e9e9d9a385"


@pytest.mark.parametrize(
    ("users", "times", "ordered"),
    [
        ([0, 0, 1, 1], [0, 0, 0, 0], False),  # no timestamp column
        ([0, 0, 1, 1], [5, 5, 9, 9], False),  # one stamp per user: still no order within a user
        ([0, 0, 1, 1], [5, 5, 9, 10], True),  # one user with an order is enough
        ([0, 1, 2], [0, 0, 0], True),  # nobody has two rows: nothing to order
        ([], [], True),
    ],
)
def test_has_time_order(users: list[int], times: list[int], ordered: bool) -> None:
    items = np.arange(len(users))
    log = InteractionLog.from_original_ids(np.array(users, dtype=np.int64), items, np.array(times, dtype=np.int64))
    assert has_time_order(log) is ordered
