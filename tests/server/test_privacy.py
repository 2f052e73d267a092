"""The ledger the server derives from the round log, without Flower's engine."""

from __future__ import annotations

from rich.console import Console

from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.records import AccountantHistory, RoundRecord
from recsys_core.privacy.accountant import PrivacyAccountant
from recsys_core.privacy.ledger import verify
from server.cli import privacy_table
from server.privacy import privacy_summary, run_ledger

NUM_CLIENTS = 5


def private_config(**user_level) -> FederatedConfig:
    return FederatedConfig.from_dict({
        "server": {"rounds": 3, "devices_per_round": 2, "server_learning_rate": 1.0},
        "privacy": {"local": {"enabled": True, "target_delta": 1e-3},
                    "user_level": {"enabled": True, "target_delta": 1e-2, "clip_norm": 0.5, **user_level}},
    })


def reported(partition: int, steps: int) -> AccountantHistory:
    accountant = PrivacyAccountant("rdp")
    accountant.record(1.0, 0.25, steps)
    return AccountantHistory.of(partition, accountant)


def record(server_round: int, joined: tuple[int, ...], *local_privacy: AccountantHistory) -> RoundRecord:
    return RoundRecord(server_round, sampled=2, secure_aggregation=False, status="aggregated", joined=joined,
                       local_privacy=local_privacy)


def test_ledger_counts_rounds_joined_and_keeps_each_devices_latest_history() -> None:
    rounds = [
        record(1, (0, 1), reported(0, 4), reported(1, 4)),
        # Device 2 declined (no update sent) but still reported its history; device 0 trained again.
        record(2, (0,), reported(0, 8), reported(2, 0)),
        record(3, (0, 3), reported(0, 12), reported(3, 4)),
    ]
    ledger = run_ledger(private_config(), NUM_CLIENTS, rounds)
    assert ledger is not None
    verify(ledger)
    assert [device.rounds_joined for device in ledger.devices] == [3, 1, 0, 1, 0]
    assert [device.local_steps for device in ledger.devices] == [12, 4, 0, 4, 0]
    assert ledger.devices[0].local_epsilon > ledger.devices[1].local_epsilon > 0 == ledger.devices[4].local_epsilon
    epsilon = ledger.user_level.epsilon
    assert epsilon.max_rounds_joined == 3 and epsilon.rounds == 3
    # Fixed-size sampling: amplification is reported but not claimed.
    assert epsilon.claimed == "without_amplification"
    assert epsilon.with_amplification < epsilon.without_amplification == epsilon.claimed_epsilon

    text = Console(width=80, record=True)
    text.print(privacy_table(privacy_summary(ledger)))
    printed = text.export_text()
    # Readable in an 80-column terminal: nothing runs past it, and the facts sit on rows of their own.
    assert max(len(line) for line in printed.splitlines()) <= 80
    assert "user-level DP" in printed and "local DP-SGD" in printed and "(central noise)" in printed
    assert f"{epsilon.claimed_epsilon:.3g} claimed" in printed
    assert all(fact in printed for fact in ("unit", "epsilon", "delta", "accountant", "assumption"))


def test_no_ledger_without_differential_privacy() -> None:
    assert run_ledger(FederatedConfig(), NUM_CLIENTS, [record(1, ())]) is None
