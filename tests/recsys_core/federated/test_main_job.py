"""The main job: private by default, the same settings as its config files, and within its budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys_core.config import read_toml
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.main_job import (
    MAIN_JOB_DELTA,
    MAIN_JOB_DEVICES,
    MAIN_JOB_NOISE_MULTIPLIER,
    main_job_values,
)
from recsys_core.privacy.accountant import ScheduleEntry, compute_epsilon

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("dataset", sorted(MAIN_JOB_DEVICES))
def test_the_main_job_is_secure_and_private_with_every_device_in_every_round(dataset: str) -> None:
    config = FederatedConfig.from_dict(main_job_values(dataset)).validate(num_devices=MAIN_JOB_DEVICES[dataset])
    assert config.secure_aggregation.enabled
    user_level = config.privacy.user_level
    assert user_level.enabled and user_level.noise_placement == "distributed"
    assert config.privacy.noise_source == "os_entropy"
    assert config.server.devices_per_round == MAIN_JOB_DEVICES[dataset]
    # delta at most 1 / (10 users), as the privacy claims promise.
    assert user_level.target_delta <= 1 / (10 * MAIN_JOB_DEVICES[dataset])


@pytest.mark.parametrize("dataset", sorted(MAIN_JOB_DEVICES))
def test_the_config_files_hold_the_main_jobs_settings(dataset: str) -> None:
    # The file a researcher reads and the job fedrec simulate runs must not drift apart.
    from_file = FederatedConfig.from_dict(read_toml(ROOT / "simulations/configs" / dataset / "item_knn.toml"))
    assert from_file == FederatedConfig.from_dict(main_job_values(dataset))


def test_the_noise_spends_at_most_epsilon_8_over_all_its_rounds() -> None:
    rounds = FederatedConfig.from_dict(main_job_values("ml-100k")).server.rounds
    history = [ScheduleEntry(MAIN_JOB_NOISE_MULTIPLIER, 1.0, rounds)]
    epsilon = compute_epsilon(history, MAIN_JOB_DELTA, "rdp")
    assert 7.9 < epsilon <= 8.0


def test_flwr_run_defaults_to_the_private_main_job() -> None:
    pyproject = read_toml(ROOT / "pyproject.toml")
    default = pyproject["tool"]["flwr"]["app"]["config"]["config"]
    assert default == "simulations/configs/synthetic/item_knn.toml"


@pytest.mark.parametrize(("sections", "reason"), [
    ({}, "no differential privacy"),
    ({"privacy": {"user_level": {"enabled": True, "target_delta": 1e-3}}}, "sees every device's update"),
    ({"privacy": {"user_level": {"enabled": True, "target_delta": 1e-3, "noise_placement": "distributed"},
                  "noise_source": "run_seed"}, "secure_aggregation": {"enabled": True}}, "run seed"),
])
def test_a_run_that_is_not_private_must_say_so(sections: dict, reason: str) -> None:
    from recsys_core.errors import ConfigError

    config = FederatedConfig.from_dict(sections)
    assert reason in (config.privacy_shortfall() or "")
    with pytest.raises(ConfigError, match=f"this run is not private: .*{reason}.*private = false"):
        config.require_private()
    assert FederatedConfig.from_dict({**sections, "private": False}).require_private().private is False


@pytest.mark.parametrize("sections", [
    # Local DP: each device adds its own noise, the mode for a device that trusts nobody.
    {"privacy": {"local": {"enabled": True, "target_delta": 1e-3}}},
    {"privacy": {"user_level": {"enabled": True, "target_delta": 1e-3, "noise_placement": "distributed"}},
     "secure_aggregation": {"enabled": True}},
])
def test_dp_with_secret_noise_that_the_server_cannot_see_alone_is_private(sections: dict) -> None:
    assert FederatedConfig.from_dict(sections).require_private().privacy_shortfall() is None


def test_a_run_that_could_spend_more_than_its_budget_is_refused_before_it_starts() -> None:
    import re

    from recsys_core.errors import ConfigError

    values = main_job_values("ml-100k")
    values["privacy"]["user_level"]["noise_multiplier"] = 1.2
    with pytest.raises(ConfigError, match=r"privacy.user_level.target_epsilon: 6 rounds at noise_multiplier 1.2 "
                                          r"can spend epsilon 9\.\d+ .* above the budget 8") as refused:
        FederatedConfig.from_dict(values).validate()
    # The noise it names is enough: the same run with it starts.
    needed = float(re.search(r"at least ([0-9.]+)", str(refused.value)).group(1))
    values["privacy"]["user_level"]["noise_multiplier"] = needed
    assert FederatedConfig.from_dict(values).validate().privacy.user_level.noise_multiplier == needed
    # A gradient model's 30 rounds at sigma 1 would spend far more than 8.
    gradient = {"server": {"rounds": 30}, "privacy": {"user_level": {"enabled": True, "target_delta": 1e-3,
                                                                       "target_epsilon": 8.0}}}
    with pytest.raises(ConfigError, match="target_epsilon: 30 rounds"):
        FederatedConfig.from_dict(gradient).validate()
