"""The [privacy] config section: one clear ConfigError naming the key for every setting that voids the guarantee."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from recsys_core.errors import ConfigError
from recsys_core.privacy.config import PrivacyConfig


def both(local: dict | None = None, user_level: dict | None = None) -> PrivacyConfig:
    return PrivacyConfig.from_dict({"local": {"enabled": True, **(local or {})},
                                    "user_level": {"enabled": True, **(user_level or {})}})


def test_defaults_and_a_full_table_are_valid():
    assert not PrivacyConfig().validate(num_users=10, min_local_examples=2).enabled
    config = PrivacyConfig.from_dict({
        "local": {"enabled": True, "noise_multiplier": 1.1, "per_sample_clip_norm": 1.0, "target_epsilon": 8,
                  "target_delta": 1e-3, "accountant": "prv"},
        "user_level": {"enabled": True, "noise_multiplier": 0.8, "clip_norm": 0.5, "noise_placement": "distributed",
                       "min_surviving_devices": 5, "target_delta": 1e-4, "accountant": "rdp"},
    })
    assert config.validate(num_users=943, min_local_examples=20, devices_per_round=50) is config
    assert config.local.target_epsilon == 8.0 and config.user_level.noise_placement == "distributed"


@pytest.mark.parametrize(("config", "checks", "key"), [
    (both(local={"noise_multiplier": 0.0}), {}, "privacy.local.noise_multiplier"),
    (both(local={"noise_multiplier": -1.0}), {}, "privacy.local.noise_multiplier"),
    (both(user_level={"noise_multiplier": 0.0}), {}, "privacy.user_level.noise_multiplier"),
    (both(local={"per_sample_clip_norm": 0.0}), {}, "privacy.local.per_sample_clip_norm"),
    (both(user_level={"clip_norm": -0.5}), {}, "privacy.user_level.clip_norm"),
    (both(local={"target_epsilon": 0.0}), {}, "privacy.local.target_epsilon"),
    (both(local={"target_epsilon": -3.0}), {}, "privacy.local.target_epsilon"),
    # delta must be below 1/(number of users) for user-level DP ...
    (both(user_level={"target_delta": 0.01}), {"num_users": 100}, "privacy.user_level.target_delta"),
    (both(user_level={"target_delta": 0.011}), {"num_users": 100}, "privacy.user_level.target_delta"),
    # ... and below 1/(local examples) for local DP.
    (both(local={"target_delta": 0.05}), {"min_local_examples": 20}, "privacy.local.target_delta"),
    (both(local={"target_delta": 0.0}), {}, "privacy.local.target_delta"),
    (both(user_level={"min_surviving_devices": 0}), {}, "privacy.user_level.min_surviving_devices"),
    (both(user_level={"noise_placement": "distributed", "min_surviving_devices": 11}), {"devices_per_round": 10},
     "privacy.user_level.min_surviving_devices"),
])
def test_bad_settings_raise_one_error_naming_the_key(config, checks, key):
    with pytest.raises(ConfigError) as caught:
        config.validate(**checks)
    assert str(caught.value).startswith(f"{key}: ")


def test_an_infinite_setting_is_refused_as_it_is_read():
    # An infinite noise multiplier or clip norm passes "> 0"; only the budget may be infinite (no budget).
    with pytest.raises(ConfigError, match="privacy.user_level.noise_multiplier: is inf; give a finite number"):
        both(user_level={"noise_multiplier": math.inf})
    assert both(user_level={"target_epsilon": math.inf}).user_level.target_epsilon == math.inf


def test_a_nan_setting_is_refused_as_it_is_read():
    # The config loader refuses NaN for every float key, before any range check could miss it.
    with pytest.raises(ConfigError, match="privacy.local.noise_multiplier: is NaN"):
        both(local={"noise_multiplier": math.nan})


def test_the_delta_rules_accept_values_just_below_the_bound():
    both(user_level={"target_delta": 0.0099}, local={"target_delta": 0.049}).validate(
        num_users=100, min_local_examples=20)


def test_a_disabled_section_is_not_checked():
    config = PrivacyConfig.from_dict({"local": {"enabled": False, "noise_multiplier": 0.0},
                                      "user_level": {"enabled": True}})
    config.validate(num_users=100)
    with pytest.raises(ConfigError, match="privacy.local.noise_multiplier"):
        PrivacyConfig.from_dict({"local": {"enabled": True, "noise_multiplier": 0.0}}).validate()


@pytest.mark.parametrize(("values", "key"), [
    ({"local": {"sigma": 1.0}}, "privacy.local.sigma"),
    ({"user_level": {"noise_placement": "server"}}, "privacy.user_level.noise_placement"),
    ({"local": {"accountant": "gdp"}}, "privacy.local.accountant"),
    ({"local": {"noise_multiplier": "1.0"}}, "privacy.local.noise_multiplier"),
])
def test_unknown_keys_and_wrong_types_name_the_key(values, key):
    with pytest.raises(ConfigError, match=key):
        PrivacyConfig.from_dict(values)


def test_reading_the_config_does_not_import_opacus_or_torch():
    # The CLI and the server parse configs before any training; Opacus alone costs more than a second.
    code = "import sys, recsys_core.privacy.config; print(sorted({'opacus', 'torch'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[3])
    assert result.stdout.strip() == "[]"


def test_too_many_required_survivors_says_which_value_would_fit():
    # The main job sized for 500 devices, run with --devices-per-round 20: the error gives the setting to use.
    config = both(user_level={"noise_placement": "distributed", "min_surviving_devices": 475})
    with pytest.raises(ConfigError, match=r"475 exceeds server.devices_per_round = 20; .*"
                                          r"--set privacy.user_level.min_surviving_devices=19\)"):
        config.validate(devices_per_round=20)
    both(user_level={"noise_placement": "distributed", "min_surviving_devices": 19}).validate(devices_per_round=20)
