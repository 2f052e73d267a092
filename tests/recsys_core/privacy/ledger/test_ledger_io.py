"""The ledger file: JSON round trip, strict JSON for infinite budgets, and clear errors on bad files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from recsys_core.errors import FedrecError
from recsys_core.privacy.ledger import LedgerError, load_ledger, verify, write_ledger
from tests.recsys_core.privacy.ledger.example_ledger import NUM_CLIENTS, ROUNDS_JOINED, make_ledger


def write_values(tmp_path: Path, values: Any) -> Path:
    path = tmp_path / "privacy-ledger.json"
    path.write_text(json.dumps(values), encoding="utf-8")
    return path


def test_ledger_records_what_the_issue_asks_for(ledger_values):
    local, user_level = ledger_values["local"], ledger_values["user_level"]
    assert set(ledger_values["library_versions"]) == {"opacus", "torch", "numpy"}
    for section in (local, user_level):
        assert section["unit_of_privacy"] and section["neighbouring_relation"] and section["mechanism"]
    assert local["epsilon"]["minimum"] <= local["epsilon"]["median"] <= local["epsilon"]["maximum"]
    assert [device["rounds_joined"] for device in ledger_values["devices"]] == ROUNDS_JOINED
    assert all(device["local_schedule"][0]["sampling_rate"] > 0 for device in ledger_values["devices"])
    assert user_level["noise_placement"] == "distributed"
    assert {"with_amplification", "without_amplification", "claimed", "claimed_epsilon", "reason",
            "sampling_assumption", "accountant"} <= set(user_level["epsilon"])


def test_file_round_trip_and_recompute_reproduce_every_recorded_epsilon(ledger, tmp_path):
    loaded = load_ledger(write_ledger(ledger, tmp_path / "ledger.json"))
    assert loaded == ledger

    recomputed = verify(loaded, relative_tolerance=0.0)
    assert list(recomputed.local_epsilons) == [device.local_epsilon for device in ledger.devices]
    assert recomputed.local_summary == ledger.local.epsilon
    assert recomputed.user_level == ledger.user_level.epsilon
    # Devices that trained longer spent more: the distribution is not a copy of one figure.
    assert len(set(recomputed.local_epsilons)) == NUM_CLIENTS


def test_infinite_budget_is_written_as_strict_json_and_read_back(tmp_path):
    ledger = make_ledger(target_epsilon=math.inf)
    text = ledger.to_json()
    assert '"target_epsilon": "Infinity"' in text
    assert load_ledger(write_ledger(ledger, tmp_path / "ledger.json")).local.target_epsilon == math.inf


def set_path(values: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        values = values[int(part)] if part.isdigit() else values[part]
    if value is DELETE:
        del values[last]
    else:
        values[last] = value


DELETE = object()


@pytest.mark.parametrize(("path", "value", "field"), [
    ("local.delta", DELETE, "local.delta"),
    ("local.noise_multiplier", "1.1", "local.noise_multiplier"),
    ("local.noise_multiplier", -1.0, "local.noise_multiplier"),
    ("local.accountant", "gdp", "local.accountant"),
    ("local.extra", 1, "local.extra"),
    ("devices.2.rounds_joined", 2.5, "devices[2].rounds_joined"),
    ("devices.2.local_schedule.0.sampling_rate", 1.5, "devices[2].local_schedule[0].sampling_rate"),
    ("devices.2.local_steps", 999, "devices[2].local_steps"),
    ("devices.3.device_id", "client-0", "devices[3].device_id"),
    ("devices.0.local_epsilon", None, "devices[0].local_epsilon"),
    ("local.epsilon.maximum", 0.5, "local.epsilon.maximum"),
    ("user_level.noise_placement", "both", "user_level.noise_placement"),
    ("user_level.num_devices", 5, "devices"),
    ("user_level.min_surviving_devices", 3, "user_level.min_surviving_devices"),
    ("user_level.epsilon.delta", 1.0, "user_level.epsilon.delta"),
    ("user_level.epsilon.max_rounds_joined", 2, "user_level.epsilon.max_rounds_joined"),
    ("user_level.epsilon.claimed_epsilon", 0.1, "user_level.epsilon.claimed_epsilon"),
    ("devices.1.rounds_joined", 7, "devices[1].rounds_joined"),
    ("schema_version", 99, "schema_version"),
])
def test_malformed_ledger_file_names_the_file_and_the_field(tmp_path, ledger_values, path, value, field):
    set_path(ledger_values, path, value)
    path_on_disk = write_values(tmp_path, ledger_values)
    with pytest.raises(LedgerError) as caught:
        load_ledger(path_on_disk)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{path_on_disk}: {field}: ")
    assert isinstance(caught.value, FedrecError)  # the CLI prints it as one line


def test_unreadable_ledger_files_give_one_clear_error(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(LedgerError, match="broken.json: ledger: not valid JSON"):
        load_ledger(broken)
    with pytest.raises(LedgerError, match="missing.json: ledger: file not found"):
        load_ledger(tmp_path / "missing.json")
    with pytest.raises(LedgerError, match="list.json: ledger: expected an object"):
        load_ledger(write_values(tmp_path, []).rename(tmp_path / "list.json"))
