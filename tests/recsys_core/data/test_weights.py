"""A weight column (play counts): loaded, checked, summed over repeats, transformed, and kept through every step."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
from data_test_helpers import raises_at

from recsys_core.audit.canaries import CanaryConfig, insert_canaries
from recsys_core.data.interactions import InteractionLog
from recsys_core.data.loading import load_interactions
from recsys_core.data.partitions import localize_users, rows_of_users
from recsys_core.data.preprocessing import PreprocessingConfig, apply_weights, drop_duplicate_interactions, preprocess
from recsys_core.data.splits import SplitConfig, split_log
from recsys_core.errors import ConfigError
from recsys_core.experiment import ExperimentConfig
from recsys_core.models import warn_if_weights_ignored

PLAYS = "user,artist,plays\nana,Björk,120\nana,Low,3\nana,Can,1\nbo,Low,7\nbo,Can,0\nbo,Björk,1\ncy,Can,15\ncy,Low,1\n"


def plays_config(path: Path, **preprocessing: object) -> ExperimentConfig:
    return ExperimentConfig.from_dict({"data": {
        "dataset": "file", "path": str(path),
        "columns": {"user": "user", "item": "artist", "weight": "plays"},
        "preprocessing": preprocessing,
    }})


def plays_file(tmp_path: Path, text: str = PLAYS) -> Path:
    path = tmp_path / "plays.csv"
    path.write_text(text, encoding="utf-8")
    return path


def weight_of(log: InteractionLog, user: str, item: str) -> float:
    assert log.weights is not None
    users, items = log.user_map.original_ids[log.user_ids], log.item_map.original_ids[log.item_ids]
    (row,) = np.flatnonzero((users == user) & (items == item))
    return float(log.weights[row])


def test_play_counts_become_log2_weights_and_zero_play_rows_go(tmp_path: Path) -> None:
    log = load_interactions(plays_config(plays_file(tmp_path)).data)
    assert log.n_interactions == 7  # bo's 0 plays of Can record nothing
    assert weight_of(log, "ana", "Can") == 1.0  # one play weighs what an unweighted row does
    assert weight_of(log, "ana", "Low") == 2.0
    assert weight_of(log, "ana", "Björk") == pytest.approx(math.log2(121))
    assert log.summary()["has_weights"] is True


def test_raw_ignore_and_min_weight(tmp_path: Path) -> None:
    path = plays_file(tmp_path)
    raw = load_interactions(plays_config(path, weight_transform="raw").data)
    assert weight_of(raw, "ana", "Björk") == 120.0
    assert load_interactions(plays_config(path, weight_transform="ignore").data).weights is None
    heavy = load_interactions(plays_config(path, min_weight=3).data)
    assert heavy.n_interactions == 4  # 120, 3, 7 and 15 plays
    assert set(heavy.user_map.original_ids) == {"ana", "bo", "cy"}


def test_repeated_pairs_add_their_plays(tmp_path: Path) -> None:
    path = plays_file(tmp_path, "user,artist,plays\nana,Low,3\nana,Can,1\nana,Low,4\n")
    log = load_interactions(plays_config(path, weight_transform="raw").data)
    assert log.n_interactions == 2
    assert weight_of(log, "ana", "Low") == 7.0
    last = drop_duplicate_interactions(InteractionLog.from_original_ids(
        np.array(["a", "a", "a"]), np.array(["x", "y", "x"]), np.array([1, 2, 3]), weights=np.array([1.0, 2.0, 5.0])),
        keep="last")
    assert last.timestamps.tolist() == [2, 3] and last.weights is not None and last.weights.tolist() == [2.0, 6.0]


def test_a_negative_weight_names_its_file_and_line(tmp_path: Path) -> None:
    path = plays_file(tmp_path, "user,artist,plays\nana,Low,3\nbo,Can,-2\n")
    with raises_at(path, 3, "the weight column 'plays' has the negative value -2"):
        load_interactions(plays_config(path).data)


def test_a_bad_weight_setting_is_refused_before_reading(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.preprocessing.weight_transform: 'sqrt' is not one of 'log1p', "):
        plays_config(tmp_path / "absent.csv", weight_transform="sqrt")
    with pytest.raises(ConfigError, match="data.preprocessing.min_weight: is NaN"):
        plays_config(tmp_path / "absent.csv", min_weight=float("nan"))
    log = InteractionLog.from_original_ids(np.array([1, 2]), np.array([3, 4]), name="clicks")
    with pytest.raises(ConfigError, match=r"min_weight=2 needs a weight column \(data.columns.weight\)"):
        apply_weights(log, 2, "log1p")


def test_weights_survive_splits_partitions_and_canaries(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 600
    log = preprocess(InteractionLog.from_original_ids(
        rng.integers(0, 40, n), rng.integers(0, 70, n), rng.integers(0, 10**6, n),
        weights=rng.integers(1, 50, n).astype(np.float64)), PreprocessingConfig())
    assert log.weights is not None
    split = split_log(log, SplitConfig())
    for part in (split.train, split.valid, split.test, split.history_before("test")):
        assert part.weights is not None and len(part.weights) == part.n_interactions
    # Every row keeps its own weight: (user, item, timestamp) identifies a row here.
    key = {(u, i, t): w for u, i, t, w in zip(log.user_ids, log.item_ids, log.timestamps, log.weights, strict=True)}
    merged = split.history_before("test")
    assert all(key[(u, i, t)] == w for u, i, t, w in
               zip(merged.user_ids, merged.item_ids, merged.timestamps, merged.weights, strict=True))
    users = np.array([3, 7])
    local = localize_users(rows_of_users(split.train, users), users)
    assert local.weights is not None and np.array_equal(
        local.weights, np.concatenate([split.train.weights[split.train.user_ids == u] for u in users]))
    planted, plan = insert_canaries(split, CanaryConfig(count=4, seed=1))
    assert plan is not None and planted.train.weights is not None
    assert len(planted.train.weights) == planted.train.n_interactions
    assert planted.train.weights.max() == split.train.weights.max()


def test_a_model_that_ignores_weights_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    log = InteractionLog.from_original_ids(np.array([1, 2]), np.array([3, 4]), name="plays",
                                           weights=np.array([1.0, 2.0]))
    with caplog.at_level(logging.WARNING, logger="fedrec.data"):
        warn_if_weights_ignored("neumf", log)
        warn_if_weights_ignored("mult_vae", log)
        warn_if_weights_ignored("sasrec", log.select(np.array([True, True])))
        warn_if_weights_ignored("sasrec", InteractionLog.from_original_ids(np.array([1]), np.array([3])))
    (record,) = caplog.records
    assert "sasrec ignores the interaction weights of plays" in record.getMessage()
    assert "mult_dae, mult_vae, neumf weigh interactions by them" in record.getMessage()


@pytest.mark.parametrize("column", ["plays", "stars"])
def test_a_rating_or_weight_beyond_single_precision_names_its_line(tmp_path: Path, column: str) -> None:
    row = "bo,Can,1e300,4" if column == "plays" else "bo,Can,2,1e300"
    path = plays_file(tmp_path, f"user,artist,plays,stars\nana,Low,3,4\n{row}\n")
    config = ExperimentConfig.from_dict({"data": {
        "dataset": "file", "path": str(path),
        "columns": {"user": "user", "item": "artist", "weight": "plays", "rating": "stars"}}})
    role = "weight" if column == "plays" else "rating"
    with raises_at(path, 3, f"the {role} column", "1e+300, beyond what a rating or weight can hold"):
        load_interactions(config.data)


@pytest.mark.parametrize(("preprocessing", "step"), [
    ({"min_weight": 1e6}, "data.preprocessing.min_weight = 1000000.0 removes all 8 interactions of 'plays'"),
    ({"_zero_weights": True}, "the weight column (data.columns.weight), where every row weighs 0, which records "
                              "no interaction, removes all"),
    ({"min_user_interactions": 50}, "the k-core (data.preprocessing.min_user_interactions = 50"),
])
def test_a_filter_that_removes_every_row_says_which(tmp_path: Path, preprocessing: dict, step: str) -> None:
    text = "user,artist,plays\nana,Low,0\nbo,Can,0\n" if preprocessing.pop("_zero_weights", False) else PLAYS
    with pytest.raises(ConfigError, match=re.escape(step)):
        load_interactions(plays_config(plays_file(tmp_path, text), **preprocessing).data)

