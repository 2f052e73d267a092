"""The server's DP step and the ledger it derives from the round log, without Flower's engine."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rich.console import Console

from recsys_core.federated.config import FederatedConfig
from recsys_core.privacy.accountant import PrivacyAccountant
from recsys_core.privacy.ledger import verify
from server.cli import privacy_table
from server.privacy import privacy_summary, run_ledger, user_level_step

NUM_CLIENTS = 5


def private_config(**user_level) -> FederatedConfig:
    return FederatedConfig.from_dict({
        "server": {"rounds": 3, "clients_per_round": 2, "server_learning_rate": 1.0},
        "privacy": {"local": {"enabled": True, "target_delta": 1e-3},
                    "user_level": {"enabled": True, "target_delta": 1e-2, "clip_norm": 0.5, **user_level}},
    })


def accountant_state(steps: int) -> str:
    accountant = PrivacyAccountant("rdp")
    accountant.record(1.0, 0.25, steps)
    return json.dumps(accountant.to_dict())


def test_ledger_counts_rounds_joined_and_keeps_each_devices_latest_history() -> None:
    rounds = [
        {"round": 1, "joined": [0, 1], "local_privacy": {"0": accountant_state(4), "1": accountant_state(4)}},
        # Device 2 declined (no update sent) but still reported its history; device 0 trained again.
        {"round": 2, "joined": [0], "local_privacy": {"0": accountant_state(8), "2": accountant_state(0)}},
        {"round": 3, "joined": [0, 3], "local_privacy": {"0": accountant_state(12), "3": accountant_state(4)}},
    ]
    ledger = run_ledger(private_config(), NUM_CLIENTS, rounds)
    assert ledger is not None
    verify(ledger)
    assert [client.rounds_joined for client in ledger.clients] == [3, 1, 0, 1, 0]
    assert [client.local_steps for client in ledger.clients] == [12, 4, 0, 4, 0]
    assert ledger.clients[0].local_epsilon > ledger.clients[1].local_epsilon > 0 == ledger.clients[4].local_epsilon
    epsilon = ledger.user_level.epsilon
    assert epsilon.max_rounds_joined == 3 and epsilon.rounds == 3
    # Fixed-size sampling: amplification is reported but not claimed.
    assert epsilon.claimed == "without_amplification"
    assert epsilon.with_amplification < epsilon.without_amplification == epsilon.claimed_epsilon

    text = Console(width=250, record=True)
    text.print(privacy_table(privacy_summary(ledger)))
    printed = text.export_text()
    assert "user-level DP-FedAvg (central noise)" in printed and "local DP-SGD" in printed
    assert f"{epsilon.claimed_epsilon:.3g} claimed (not amplified" in printed


def test_no_ledger_without_differential_privacy() -> None:
    assert run_ledger(FederatedConfig(), NUM_CLIENTS, [{"round": 1}]) is None


def test_user_level_step_moves_by_the_server_rate_times_the_noisy_mean() -> None:
    config = private_config(noise_multiplier=1e-9)
    current = {"w": np.zeros(2, dtype=np.float32)}
    updated = user_level_step(config, current, [{"w": np.array([0.3, 0.4], dtype=np.float32)}] * 2)
    assert updated["w"].dtype == np.float32
    # Two clipped updates over the planned two clients, server rate 1.
    np.testing.assert_allclose(updated["w"], [0.3, 0.4], atol=1e-6)
    noisy = private_config(noise_multiplier=2.0)
    draws = user_level_step(noisy, {"w": np.zeros(20_000, dtype=np.float32)}, [{"w": np.zeros(20_000)}])["w"]
    # Noise std sigma * C on the sum, over the planned two clients.
    assert float(np.std(draws)) == pytest.approx(2.0 * 0.5 / 2, rel=0.05)
