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
    assert [client["rounds_joined"] for client in ledger_values["clients"]] == ROUNDS_JOINED
    assert all(client["local_schedule"][0]["sampling_rate"] > 0 for client in ledger_values["clients"])
    assert user_level["noise_placement"] == "distributed"
    assert {"with_amplification", "without_amplification", "claimed", "claimed_epsilon", "reason",
            "sampling_assumption", "accountant"} <= set(user_level["epsilon"])


def test_file_round_trip_and_recompute_reproduce_every_recorded_epsilon(ledger, tmp_path):
    loaded = load_ledger(write_ledger(ledger, tmp_path / "ledger.json"))
    assert loaded == ledger

    recomputed = verify(loaded, relative_tolerance=0.0)
    assert list(recomputed.local_epsilons) == [client.local_epsilon for client in ledger.clients]
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
    ("clients.2.rounds_joined", 2.5, "clients[2].rounds_joined"),
    ("clients.2.local_schedule.0.sampling_rate", 1.5, "clients[2].local_schedule[0].sampling_rate"),
    ("clients.2.local_steps", 999, "clients[2].local_steps"),
    ("clients.3.client_id", "client-0", "clients[3].client_id"),
    ("clients.0.local_epsilon", None, "clients[0].local_epsilon"),
    ("local.epsilon.maximum", 0.5, "local.epsilon.maximum"),
    ("user_level.noise_placement", "both", "user_level.noise_placement"),
    ("user_level.num_clients", 5, "clients"),
    ("user_level.min_surviving_clients", 3, "user_level.min_surviving_clients"),
    ("user_level.epsilon.delta", 1.0, "user_level.epsilon.delta"),
    ("user_level.epsilon.max_rounds_joined", 2, "user_level.epsilon.max_rounds_joined"),
    ("user_level.epsilon.claimed_epsilon", 0.1, "user_level.epsilon.claimed_epsilon"),
    ("clients.1.rounds_joined", 7, "clients[1].rounds_joined"),
    ("schema_version", 2, "schema_version"),
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
