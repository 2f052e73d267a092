"""A ledger of four devices with local DP-SGD of different lengths and user-level DP-FedAvg, for the ledger tests."""

from __future__ import annotations

from recsys_core.privacy.accountant import PrivacyAccountant
from recsys_core.privacy.ledger import (
    PrivacyLedger,
    build_ledger,
    device_privacy,
    local_privacy_record,
    user_level_privacy_record,
)
from recsys_core.privacy.user_level import user_level_epsilon

LOCAL_DELTA, USER_DELTA = 1e-4, 1e-3
NUM_CLIENTS, CLIENTS_PER_ROUND, ROUNDS = 4, 2, 6
ROUNDS_JOINED = [3, 4, 2, 3]


def make_ledger(target_epsilon: float = 8.0) -> PrivacyLedger:
    """Four devices with local DP-SGD of different lengths, and user-level DP-FedAvg over the run."""
    devices = []
    for index, joined in enumerate(ROUNDS_JOINED):
        accountant = PrivacyAccountant("rdp")
        for _ in range(joined):
            accountant.record(noise_multiplier=1.1, sampling_rate=0.2 + 0.05 * index, steps=10)
        devices.append(device_privacy(f"client-{index}", joined, accountant, LOCAL_DELTA))
    local = local_privacy_record(accountant="rdp", noise_multiplier=1.1, clip_norm=1.0, delta=LOCAL_DELTA,
                                 target_epsilon=target_epsilon, devices=devices)
    epsilon = user_level_epsilon(noise_multiplier=1.5, rounds=ROUNDS, devices_per_round=CLIENTS_PER_ROUND,
                                 num_devices=NUM_CLIENTS, delta=USER_DELTA, max_rounds_joined=max(ROUNDS_JOINED))
    user_level = user_level_privacy_record(noise_placement="distributed", clip_norm=0.5, min_surviving_devices=2,
                                           num_devices=NUM_CLIENTS, devices_per_round=CLIENTS_PER_ROUND,
                                           epsilon=epsilon)
    return build_ledger(devices=devices, local=local, user_level=user_level)
