"""The accountant facade: state survives JSON and restarts, composition is exact, budgets hold at the boundary."""

from __future__ import annotations

import json

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from recsys_core.privacy.accountant import (
    PrivacyAccountant,
    ScheduleEntry,
    compute_epsilon,
    noise_multiplier_for_budget,
)

DELTA = 1e-5


def through_json(accountant: PrivacyAccountant) -> PrivacyAccountant:
    """What a device does between rounds: state to Context.state (JSON) and back."""
    return PrivacyAccountant.from_dict(json.loads(json.dumps(accountant.to_dict())))


@pytest.mark.parametrize("name", ["rdp", "prv"])
def test_rounds_r_and_r_plus_3_compose_like_one_accountant_over_all_steps(name):
    # Round r: 6 steps; then the state travels through JSON (a restart); round r + 3: 4 steps at another rate.
    device = PrivacyAccountant(name)
    device.record(noise_multiplier=1.0, sampling_rate=0.1, steps=6)
    after_round_r = device.epsilon(DELTA)
    device = through_json(device)
    assert device.epsilon(DELTA) == after_round_r
    device.record(noise_multiplier=1.0, sampling_rate=0.08, steps=4)

    one_accountant = PrivacyAccountant(name)
    for _ in range(6):
        one_accountant.record(1.0, 0.1)
    for _ in range(4):
        one_accountant.record(1.0, 0.08)

    assert device.epsilon(DELTA) == one_accountant.epsilon(DELTA)
    assert device.history == one_accountant.history
    # The failure mode this guards against: a device that lost its state under-reports.
    only_round_r_plus_3 = PrivacyAccountant(name, [ScheduleEntry(1.0, 0.08, 4)])
    assert only_round_r_plus_3.epsilon(DELTA) < device.epsilon(DELTA)


def test_identical_steps_merge_and_total_steps_count_them():
    accountant = PrivacyAccountant()
    accountant.record(1.0, 0.1, steps=5)
    accountant.record(1.0, 0.1, steps=7)
    accountant.record(1.2, 0.1, steps=0)
    assert accountant.history == (ScheduleEntry(1.0, 0.1, 12),)
    assert accountant.total_steps == 12


def test_state_loads_into_an_opacus_accountant_and_back():
    accountant = PrivacyAccountant("rdp", [ScheduleEntry(1.1, 0.05, 40), ScheduleEntry(0.9, 0.05, 10)])
    opacus_accountant = RDPAccountant()
    opacus_accountant.load_state_dict(accountant.opacus_state_dict())
    assert opacus_accountant.get_epsilon(DELTA) == accountant.epsilon(DELTA)
    assert PrivacyAccountant.from_opacus(opacus_accountant).history == accountant.history


@pytest.mark.parametrize("schedule", [
    [ScheduleEntry(1.2, 1.0, 20)],       # user-level DP-FedAvg without amplification: 20 rounds joined
    [ScheduleEntry(1.0, 0.05, 1000)],    # local DP-SGD: batch 1/20 of the data, 50 epochs
])
def test_rdp_and_prv_agree_within_ten_percent(schedule):
    rdp = compute_epsilon(schedule, DELTA, "rdp")
    prv = compute_epsilon(schedule, DELTA, "prv")
    assert abs(rdp - prv) <= 0.10 * max(rdp, prv)
    # PRV is the tighter analysis; RDP below it would point at a bug in one of them.
    assert prv <= rdp


def test_nothing_spent_before_the_first_step():
    assert PrivacyAccountant("rdp").epsilon(DELTA) == 0.0
    assert PrivacyAccountant("prv").epsilon(DELTA) == 0.0


def test_would_exceed_allows_exactly_the_budget_and_not_a_hair_more():
    accountant = PrivacyAccountant("rdp", [ScheduleEntry(1.0, 0.1, 50)])
    before = accountant.history
    planned = {"noise_multiplier": 1.0, "sampling_rate": 0.1, "steps": 25}
    epsilon_after = accountant.epsilon_after([ScheduleEntry(**planned)], DELTA)
    assert epsilon_after > accountant.epsilon(DELTA)

    assert not accountant.would_exceed(target_epsilon=epsilon_after, delta=DELTA, **planned)
    assert accountant.would_exceed(target_epsilon=float(np.nextafter(epsilon_after, 0)), delta=DELTA, **planned)
    assert accountant.history == before  # asking does not spend


def test_noise_multiplier_for_budget_spends_at_most_the_budget_over_the_whole_plan():
    # DP-FedAvg without amplification: every planned round is a full Gaussian mechanism (sampling rate 1).
    rounds = 20
    sigma = noise_multiplier_for_budget(target_epsilon=3.0, delta=DELTA, sampling_rate=1.0, steps=rounds)
    spent = compute_epsilon([ScheduleEntry(sigma, 1.0, rounds)], DELTA)
    assert 3.0 - 0.05 <= spent <= 3.0
    # Sized for one round only, the noise would be far too small for the whole run.
    per_round = noise_multiplier_for_budget(target_epsilon=3.0, delta=DELTA, sampling_rate=1.0, steps=1)
    assert per_round < sigma
    assert compute_epsilon([ScheduleEntry(per_round, 1.0, rounds)], DELTA) > 3.0


@pytest.mark.parametrize(("state", "message"), [
    ({"format": 1, "accountant": "gdp", "history": []}, "accountant"),
    ({"format": 1, "accountant": "rdp", "history": [[1.0, 0.1, 3], [1.0, 0.1, -2]]}, r"history\[1\]\.steps"),
    ({"format": 1, "accountant": "rdp", "history": [[0.0, 0.1, 3]]}, r"history\[0\]\.noise_multiplier"),
    ({"format": 1, "accountant": "rdp", "history": [[1.0, 1.5, 3]]}, r"history\[0\]\.sampling_rate"),
    ({"format": 1, "accountant": "rdp", "history": [[1.0, 0.1]]}, r"history\[0\]"),
    ({"accountant": "rdp", "history": []}, "format"),
])
def test_malformed_state_names_the_bad_field(state, message):
    with pytest.raises(ValueError, match=message):
        PrivacyAccountant.from_dict(state)


def test_delta_outside_zero_one_is_rejected():
    with pytest.raises(ValueError, match="delta"):
        PrivacyAccountant("rdp", [ScheduleEntry(1.0, 0.1, 1)]).epsilon(1.0)
