"""Configs are typed, validated once, and name the key that is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys_core.config import apply_overrides, dataclass_from_dict, read_toml
from recsys_core.errors import ConfigError
from recsys_core.experiment import ExperimentConfig
from recsys_core.training import TrainConfig


def test_nested_sections_and_type_conversion() -> None:
    config = ExperimentConfig.from_dict({
        "data": {"dataset": "synthetic", "split": {"method": "random_holdout"}},
        "model": {"name": "sasrec", "options": {"hidden_dim": 16}},
        "train": {"learning_rate": 1, "epochs": 3},
        "evaluation": {"cutoffs": [5, 10]},
    })
    assert config.data.split.method == "random_holdout"
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
    assert config.evaluation.cutoffs == (5, 10)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"train": {"epohcs": 3}}, "train.epohcs"),
        ({"train": {"epochs": "many"}}, "train.epochs: expected int"),
        ({"train": {"epochs": 0}}, "train.epochs: must be positive"),
        ({"model": {"name": "nope"}}, "unknown model 'nope'"),
        ({"model": {"name": "neumf", "options": {"depth": 3}}}, "unknown option"),
        ({"data": {"dataset": "ml-5k"}}, "ml-5k"),
        ({"data": {"split": {"method": "coin"}}}, "split.method"),
        ({"data": {"dataset": "file"}}, "data.path"),
    ],
)
def test_invalid_values_fail_with_the_key_named(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_dict(values)


def test_booleans_are_not_numbers() -> None:
    with pytest.raises(ConfigError, match="epochs"):
        dataclass_from_dict(TrainConfig, {"epochs": True})


def test_overrides_parse_toml_values() -> None:
    values = apply_overrides({"train": {"epochs": 3}}, ["train.epochs=5", "model.name=sasrec",
                                                        "evaluation.cutoffs=[1, 2]"])
    assert values == {"train": {"epochs": 5}, "model": {"name": "sasrec"}, "evaluation": {"cutoffs": [1, 2]}}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["train.epochs"])


def test_read_toml_reports_file_and_problem(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[train\nepochs = 3\n")
    with pytest.raises(ConfigError, match="broken.toml: not valid TOML"):
        read_toml(broken)
    with pytest.raises(ConfigError, match="config file not found"):
        read_toml(tmp_path / "missing.toml")
