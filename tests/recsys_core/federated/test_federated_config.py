"""The federated config's keys: one word, device, for one thing; old names get one clear error."""

from __future__ import annotations

import pytest

from recsys_core.errors import ConfigError
from recsys_core.federated.config import FederatedConfig


@pytest.mark.parametrize(("values", "words"), [
    ({"server": {"clients_per_round": 10}}, "server.clients_per_round was renamed server.devices_per_round"),
    ({"server": {"min_clients": 2}}, "server.min_clients was renamed server.min_devices"),
    ({"partition": {"users_per_client": 2}}, "partition.users_per_client was renamed partition.users_per_device"),
    ({"privacy": {"user_level": {"min_surviving_clients": 4}}},
     "privacy.user_level.min_surviving_clients was renamed privacy.user_level.min_surviving_devices"),
])
def test_an_old_client_key_says_what_it_is_called_now(values: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        FederatedConfig.from_dict(values)


def test_the_device_keys_are_read() -> None:
    config = FederatedConfig.from_dict({"server": {"devices_per_round": 7, "min_devices": 2}})
    assert config.server.devices_per_round == 7 and config.server.min_devices == 2


def test_a_run_config_with_an_infinite_budget_reads_back_from_its_strict_json(tmp_path) -> None:
    # config.json spells infinity "Infinity" (strict JSON); resume and audit read it back as the same config.
    import json

    from recsys_core.run_records import write_json

    config = FederatedConfig.from_dict({"privacy": {"user_level": {"target_epsilon": float("inf")}}})
    write_json(tmp_path / "config.json", json.loads(config.to_json()))
    assert '"Infinity"' in (tmp_path / "config.json").read_text()
    assert FederatedConfig.from_dict(json.loads((tmp_path / "config.json").read_text())) == config
