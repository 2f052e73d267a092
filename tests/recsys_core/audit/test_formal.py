"""Formal audit: a second, independent accountant, and the ledger checked against config and round log."""

from __future__ import annotations

import json
from typing import Any

import pytest

from recsys_core.audit.formal import check_against_log, guarantee_statement, pld_epsilon, recompute_with_two_accountants
from recsys_core.federated.records import RoundRecord, round_record_from_dict
from recsys_core.privacy.accountant import PrivacyAccountant, ScheduleEntry, compute_epsilon
from recsys_core.privacy.ledger import PrivacyLedger, build_ledger, device_privacy, user_level_privacy_record
from recsys_core.privacy.user_level import user_level_epsilon

SIGMA, CLIP, DELTA, NUM_CLIENTS, PER_ROUND = 1.2, 0.5, 1e-4, 6, 3
JOINED = {0: [1, 2], 1: [1, 3], 2: [2, 3], 3: [1], 4: [2], 5: [3]}  # partition -> rounds


def rounds_log() -> list[dict[str, Any]]:
    return [{"round": r, "status": "aggregated", "sampled": PER_ROUND, "secure_aggregation": False,
             "joined": [p for p, joined in JOINED.items() if r in joined],
             "user_level": {"noise_multiplier": SIGMA, "clip_norm": CLIP, "noise_placement": "central",
                            "noise_std_measured": SIGMA * CLIP * 1.003, "noise_std_declared": SIGMA * CLIP,
                            "noise_coordinates": 100_000, "expected_devices": PER_ROUND,
                            "min_surviving_devices": 1, "updates": PER_ROUND}} for r in (1, 2, 3)]


def records(rounds: list[dict[str, Any]]) -> list[RoundRecord]:
    return [round_record_from_dict(values) for values in rounds]


def config() -> dict[str, Any]:
    return {"server": {"devices_per_round": PER_ROUND}, "secure_aggregation": {"enabled": False},
            "privacy": {"local": {"enabled": False},
                        "user_level": {"enabled": True, "noise_multiplier": SIGMA, "clip_norm": CLIP,
                                       "target_delta": DELTA, "noise_placement": "central"}}}


def ledger() -> PrivacyLedger:
    epsilon = user_level_epsilon(noise_multiplier=SIGMA, rounds=3, devices_per_round=PER_ROUND,
                                 num_devices=NUM_CLIENTS, delta=DELTA, max_rounds_joined=2)
    record = user_level_privacy_record(noise_placement="central", clip_norm=CLIP, min_surviving_devices=1,
                                       num_devices=NUM_CLIENTS, devices_per_round=PER_ROUND, epsilon=epsilon)
    return build_ledger(devices=[device_privacy(str(p), len(joined)) for p, joined in JOINED.items()],
                        user_level=record)


def edited(change: dict[str, Any]) -> PrivacyLedger:
    values = json.loads(ledger().to_json())
    values["user_level"]["epsilon"].update(change)
    return PrivacyLedger.from_dict(values)


@pytest.mark.parametrize("schedule", [
    [ScheduleEntry(1.0, 0.05, 500)], [ScheduleEntry(2.0, 1.0, 10)], [ScheduleEntry(0.8, 0.2, 30),
                                                                      ScheduleEntry(1.5, 0.1, 100)]])
def test_the_second_accountant_agrees_with_opacus_prv_and_sits_below_rdp(schedule: list[ScheduleEntry]) -> None:
    second = pld_epsilon(schedule, 1e-5)
    assert second == pytest.approx(compute_epsilon(schedule, 1e-5, "prv"), rel=0.02)
    assert second <= compute_epsilon(schedule, 1e-5, "rdp") * 1.001
    assert pld_epsilon([], 1e-5) == 0.0


def test_an_honest_ledger_passes_every_check_and_states_the_guarantee_in_full() -> None:
    checks = recompute_with_two_accountants(ledger()) + check_against_log(ledger(), config(), records(rounds_log()))
    assert all(check.passed for check in checks), [check for check in checks if not check.passed]
    statement = guarantee_statement(ledger(), secure_aggregation=False)[0]
    for words in ("one user", "add or remove one user", f"{DELTA:g}", "RDP", "without amplification",
                  "Fixed-size device sampling", "added by the server", "Secure aggregation: off"):
        assert words in statement


def test_a_halved_epsilon_is_an_under_count_for_both_accountants() -> None:
    honest = ledger().user_level.epsilon.claimed_epsilon
    checks = {check.name: check for check in recompute_with_two_accountants(
        edited({"without_amplification": honest / 2, "claimed_epsilon": honest / 2}))}
    assert not checks["recomputed by the run's accountant"].passed
    second = checks["user-level claimed epsilon by a second accountant"]
    assert not second.passed and "UNDER-COUNTS" in second.detail


def test_an_edited_sigma_contradicts_the_config_and_every_logged_round() -> None:
    failed = {check.name: check.detail for check in check_against_log(edited({"noise_multiplier": 2.4}), config(),
                                                                      records(rounds_log())) if not check.passed}
    assert "noise_multiplier: ledger 2.4, config 1.2" in failed["user-level DP settings match the config"]
    assert "0 of 3 aggregated rounds" in failed["sigma and C as logged every round"]


def test_a_removed_round_and_noise_that_was_not_added_are_caught() -> None:
    rounds = rounds_log()
    failed = {check.name: check.detail for check in check_against_log(ledger(), config(), records(rounds[:2]))
              if not check.passed}
    assert "device 1: ledger 2, log 1" in failed["rounds joined per device"]
    rounds[1]["user_level"]["noise_std_measured"] = 0.0
    failed = {check.name for check in check_against_log(ledger(), config(), records(rounds)) if not check.passed}
    assert failed == {"central noise on, as measured by the server"}


def test_local_dp_devices_past_their_budget_and_secure_aggregation_off_are_caught() -> None:
    accountant = PrivacyAccountant("rdp", [ScheduleEntry(1.0, 0.5, 40)])
    from recsys_core.privacy.ledger import local_privacy_record

    devices = [device_privacy("0", 1, accountant, 1e-3)]
    local = local_privacy_record(accountant="rdp", noise_multiplier=1.0, clip_norm=1.0, delta=1e-3,
                                 target_epsilon=2.0, devices=devices)
    over_budget = build_ledger(devices=devices, local=local)
    values = {"secure_aggregation": {"enabled": True},
              "privacy": {"local": {"enabled": True, "noise_multiplier": 1.0, "per_sample_clip_norm": 1.0,
                                    "target_delta": 1e-3, "target_epsilon": 2.0}}}
    rounds = [{"round": 1, "sampled": 1, "status": "aggregated", "joined": [0], "secure_aggregation": False,
               "local_privacy": [{"partition": 0, "accountant": "rdp", "history": [
                   {"noise_multiplier": 1.0, "sampling_rate": 0.5, "steps": 40}]}]}]
    failed = {check.name for check in check_against_log(over_budget, values, records(rounds)) if not check.passed}
    assert failed == {"no device past its budget", "secure aggregation as configured"}
