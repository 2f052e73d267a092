"""One validator checks the ``[data]`` section of both ``fedrec train`` and ``fedrec simulate``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from recsys_core.data.config import DataConfig
from recsys_core.errors import ConfigError
from recsys_core.experiment import ExperimentConfig
from recsys_core.federated.config import FederatedConfig


def centralized(data: dict[str, Any]) -> DataConfig:
    return ExperimentConfig.from_dict({"data": data}).data


def federated(data: dict[str, Any]) -> DataConfig:
    return FederatedConfig.from_dict({"data": data}).validate().data


BOTH_RUNS = pytest.mark.parametrize("build", [centralized, federated], ids=["train", "simulate"])


@BOTH_RUNS
@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"dataset": "file"}, "data.path: required when data.dataset = 'file'"),
        ({"dataset": "ml-5k"}, "unknown dataset 'ml-5k'"),
        ({"split": {"method": "coin"}}, "split.method"),
        ({"canaries": {"count": -1}}, "data.canaries.count"),
        ({"preprocessing": {"min_user_interactions": -1}}, "min_user_interactions"),
        ({"synthetic": {"n_users": 0}}, "n_users"),
    ],
)
def test_both_runs_reject_a_bad_data_section_naming_the_key(
    build: Callable[[dict[str, Any]], DataConfig], data: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        build(data)


@BOTH_RUNS
def test_only_the_chosen_source_is_checked(build: Callable[[dict[str, Any]], DataConfig]) -> None:
    # A file run ignores the synthetic generator's settings, so they cannot fail it.
    data = build({"dataset": "file", "path": "ratings.csv", "synthetic": {"n_users": 0}})
    assert data.path == "ratings.csv"
