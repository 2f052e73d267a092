"""The privacy ledger: JSON round trip, third-party recomputation, and clear errors on bad files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from recsys_core.errors import FedrecError
from recsys_core.privacy.accountant import PrivacyAccountant
from recsys_core.privacy.ledger import (
    LedgerError,
    PrivacyLedger,
    build_ledger,
    client_privacy,
    load_ledger,
    local_privacy_record,
    recompute,
    user_level_privacy_record,
    verify,
    write_ledger,
)
from recsys_core.privacy.user_level import user_level_epsilon

LOCAL_DELTA, USER_DELTA = 1e-4, 1e-3
NUM_CLIENTS, CLIENTS_PER_ROUND, ROUNDS = 4, 2, 6
ROUNDS_JOINED = [3, 4, 2, 3]


def make_ledger(target_epsilon: float = 8.0) -> PrivacyLedger:
    """Four devices with local DP-SGD of different lengths, and user-level DP-FedAvg over the run."""
    clients = []
    for index, joined in enumerate(ROUNDS_JOINED):
        accountant = PrivacyAccountant("rdp")
        for _ in range(joined):
            accountant.record(noise_multiplier=1.1, sampling_rate=0.2 + 0.05 * index, steps=10)
        clients.append(client_privacy(f"client-{index}", joined, accountant, LOCAL_DELTA))
    local = local_privacy_record(accountant="rdp", noise_multiplier=1.1, clip_norm=1.0, delta=LOCAL_DELTA,
                                 target_epsilon=target_epsilon, clients=clients)
    epsilon = user_level_epsilon(noise_multiplier=1.5, rounds=ROUNDS, clients_per_round=CLIENTS_PER_ROUND,
                                 num_clients=NUM_CLIENTS, delta=USER_DELTA, max_rounds_joined=max(ROUNDS_JOINED))
    user_level = user_level_privacy_record(noise_placement="distributed", clip_norm=0.5, min_surviving_clients=2,
                                           num_clients=NUM_CLIENTS, clients_per_round=CLIENTS_PER_ROUND,
                                           epsilon=epsilon)
    return build_ledger(clients=clients, local=local, user_level=user_level)


@pytest.fixture(scope="module")
def ledger() -> PrivacyLedger:
    return make_ledger()


@pytest.fixture
def ledger_values(ledger) -> dict[str, Any]:
    return json.loads(ledger.to_json())


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


def test_recompute_uses_the_schedules_not_the_recorded_numbers(ledger_values):
    # Shorten a schedule consistently (steps and local_steps agree): the file is well formed but the
    # recorded epsilon is no longer what that schedule spends.
    client = ledger_values["clients"][1]
    client["local_schedule"][0]["steps"] -= 10
    client["local_steps"] -= 10
    tampered = PrivacyLedger.from_dict(ledger_values)
    assert recompute(tampered).local_epsilons[1] < client["local_epsilon"]
    with pytest.raises(LedgerError, match=r"clients\[1\]\.local_epsilon") as caught:
        verify(tampered)
    assert caught.value.field == "clients[1].local_epsilon"


@pytest.mark.parametrize(("field", "value"), [
    ("with_amplification", 0.01),
    ("without_amplification", 0.01),
])
def test_tampered_user_level_epsilon_fails_verification(ledger_values, field, value):
    ledger_values["user_level"]["epsilon"][field] = value
    if ledger_values["user_level"]["epsilon"]["claimed"] == field:
        ledger_values["user_level"]["epsilon"]["claimed_epsilon"] = value
    with pytest.raises(LedgerError, match=f"user_level.epsilon.{field}"):
        verify(PrivacyLedger.from_dict(ledger_values))


def test_claiming_amplification_the_assumptions_do_not_allow_fails_verification(ledger_values):
    epsilon = ledger_values["user_level"]["epsilon"]
    epsilon["claimed"], epsilon["claimed_epsilon"] = "with_amplification", epsilon["with_amplification"]
    with pytest.raises(LedgerError, match="user_level.epsilon.claimed"):
        verify(PrivacyLedger.from_dict(ledger_values))


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


def test_a_user_level_only_ledger_needs_no_local_schedules():
    epsilon = user_level_epsilon(noise_multiplier=1.0, rounds=3, clients_per_round=1, num_clients=2, delta=0.1,
                                 max_rounds_joined=2)
    ledger = build_ledger(
        clients=[client_privacy("a", 2), client_privacy("b", 1)],
        user_level=user_level_privacy_record(noise_placement="central", clip_norm=1.0, min_surviving_clients=1,
                                             num_clients=2, clients_per_round=1, epsilon=epsilon),
    )
    recomputed = verify(PrivacyLedger.from_dict(json.loads(ledger.to_json())))
    assert recomputed.local_summary is None and recomputed.local_epsilons == (None, None)
    assert recomputed.user_level.max_rounds_joined == 2
