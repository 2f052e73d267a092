"""Verifying a ledger: every epsilon recomputed from the schedules alone, and tampered figures caught."""

from __future__ import annotations

import json

import pytest

from recsys_core.privacy.ledger import (
    LedgerError,
    PrivacyLedger,
    build_ledger,
    device_privacy,
    recompute,
    user_level_privacy_record,
    verify,
)
from recsys_core.privacy.user_level import user_level_epsilon


def test_recompute_uses_the_schedules_not_the_recorded_numbers(ledger_values):
    # Shorten a schedule consistently (steps and local_steps agree): the file is well formed but the
    # recorded epsilon is no longer what that schedule spends.
    device = ledger_values["devices"][1]
    device["local_schedule"][0]["steps"] -= 10
    device["local_steps"] -= 10
    tampered = PrivacyLedger.from_dict(ledger_values)
    assert recompute(tampered).local_epsilons[1] < device["local_epsilon"]
    with pytest.raises(LedgerError, match=r"devices\[1\]\.local_epsilon") as caught:
        verify(tampered)
    assert caught.value.field == "devices[1].local_epsilon"


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


def test_a_user_level_only_ledger_needs_no_local_schedules():
    epsilon = user_level_epsilon(noise_multiplier=1.0, rounds=3, devices_per_round=1, num_devices=2, delta=0.1,
                                 max_rounds_joined=2)
    ledger = build_ledger(
        devices=[device_privacy("a", 2), device_privacy("b", 1)],
        user_level=user_level_privacy_record(noise_placement="central", clip_norm=1.0, min_surviving_devices=1,
                                             num_devices=2, devices_per_round=1, epsilon=epsilon),
    )
    recomputed = verify(PrivacyLedger.from_dict(json.loads(ledger.to_json())))
    assert recomputed.local_summary is None and recomputed.local_epsilons == (None, None)
    assert recomputed.user_level.max_rounds_joined == 2
