"""Configs are typed, validated once, and name the key that is wrong."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from recsys_core.config import ConfigKeyError, apply_overrides, dataclass_from_dict, dataclass_to_dict, read_toml
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
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xb4\x00\xff" * 20)
    with pytest.raises(ConfigError, match="binary.toml: not a TOML text file"):
        read_toml(binary)
    with pytest.raises(ConfigError, match="is a folder; --config takes a TOML file"):
        read_toml(tmp_path)


@dataclass(frozen=True)
class Entry:
    name: str
    weight: float | None


@dataclass(frozen=True)
class Record:
    """No defaults: every key is required, as in the privacy ledger."""

    entries: tuple[Entry, ...]
    limit: float


def test_tuples_of_dataclasses_name_the_item_that_is_wrong() -> None:
    record = dataclass_from_dict(Record, {"entries": [{"name": "a", "weight": 1}, {"name": "b", "weight": None}],
                                          "limit": 2})
    assert record == Record((Entry("a", 1.0), Entry("b", None)), 2.0)
    with pytest.raises(ConfigKeyError) as caught:
        dataclass_from_dict(Record, {"entries": [{"name": "a", "weight": 1}, {"name": "b", "weight": "x"}],
                                     "limit": 2})
    assert (caught.value.key, caught.value.reason) == ("entries[1].weight", "expected float, got 'x'")
    assert str(caught.value) == "entries[1].weight: expected float, got 'x'"


def test_a_key_without_a_default_must_be_present() -> None:
    with pytest.raises(ConfigKeyError) as caught:
        dataclass_from_dict(Record, {"entries": [{"name": "a"}], "limit": 2})
    assert (caught.value.key, caught.value.reason) == ("entries[0].weight", "missing")


def test_unknown_keys_keep_their_message_and_name_the_first_key() -> None:
    with pytest.raises(ConfigKeyError) as caught:
        dataclass_from_dict(TrainConfig, {"epohcs": 3, "bogus": 1})
    assert str(caught.value).startswith("unknown config key(s) bogus, epohcs; known keys here: ")
    assert caught.value.key == "bogus" and caught.value.reason.startswith("unknown key; known keys here: ")


def test_decoders_rewrite_raw_values_of_their_type_only() -> None:
    def decode(value: object) -> object:
        return math.inf if value == "Infinity" else value

    values = {"entries": [{"name": "Infinity", "weight": "Infinity"}], "limit": "Infinity"}
    record = dataclass_from_dict(Record, values, decoders={float: decode})
    assert record == Record((Entry("Infinity", math.inf),), math.inf)
    with pytest.raises(ConfigKeyError, match=r"entries\[0\]\.weight: expected float, got 'Infinity'"):
        dataclass_from_dict(Record, values)


def test_to_dict_encodes_leaf_values() -> None:
    record = Record((Entry("a", math.inf), Entry("b", None)), 1.0)
    assert dataclass_to_dict(record) == {"entries": [{"name": "a", "weight": math.inf}, {"name": "b", "weight": None}],
                                         "limit": 1.0}
    assert dataclass_to_dict(record, encode=lambda value: "Infinity" if value == math.inf else value)["entries"][0] \
        == {"name": "a", "weight": "Infinity"}



@pytest.mark.parametrize(("values", "key"), [
    ({"local": {"learning_rate": float("nan")}}, "local.learning_rate"),
    ({"privacy": {"user_level": {"clip_norm": float("nan")}}}, "privacy.user_level.clip_norm"),
    ({"model": {"name": "neumf", "options": {"dropout": float("nan")}}}, "model.dropout"),
])
def test_a_nan_setting_is_refused_naming_its_key(values: dict, key: str) -> None:
    # NaN fails every range check silently (nan > 0 is False, and so is nan < 0), so it needs its own.
    from recsys_core.federated.config import FederatedConfig

    with pytest.raises(ConfigError, match=f"{key}.*NaN"):
        FederatedConfig.from_dict(values).validate()


@pytest.mark.parametrize(("section", "key"), [
    ("local", "learning_rate"), ("local", "proximal_mu"), ("server", "server_learning_rate"),
    ("model", "dropout"), ("privacy", "user_level.clip_norm"),
])
@pytest.mark.parametrize("infinity", [math.inf, -math.inf])
def test_an_infinite_setting_is_refused_naming_its_key(section: str, key: str, infinity: float) -> None:
    # inf passes every "> 0" check; a run with an infinite learning rate trained nothing and exited 0.
    from recsys_core.experiment import ExperimentConfig
    from recsys_core.federated.config import FederatedConfig

    values: dict = {"model": {"name": "neumf", "options": {key: infinity}}} if section == "model" else {}
    if section != "model":
        leaf: dict = values.setdefault(section, {})
        *tables, name = key.split(".")
        for table in tables:
            leaf = leaf.setdefault(table, {})
        leaf[name] = infinity
    with pytest.raises(ConfigError, match=rf"{section}\.{key}: is -?inf; give a finite number"):
        FederatedConfig.from_dict(values).validate()
    with pytest.raises(ConfigError, match=r"train\.learning_rate: is -?inf; give a finite number"):
        ExperimentConfig.from_dict({"train": {"learning_rate": infinity}})


def test_an_infinite_budget_still_means_no_budget() -> None:
    from recsys_core.federated.config import FederatedConfig

    config = FederatedConfig.from_dict({"privacy": {"user_level": {"target_epsilon": math.inf}}})
    assert config.privacy.user_level.target_epsilon == math.inf
