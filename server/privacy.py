"""The server's part of differential privacy: the run's privacy ledger from its round records.

The DP-FedAvg step itself is :func:`recsys_core.federated.aggregation.apply_round`; this
module turns the round log (``rounds.jsonl``: who sent an update in which round, and each
device's accountant history) into the ledger a reviewer can recompute.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.records import RoundRecord
from recsys_core.privacy.accountant import ScheduleEntry, compute_epsilon
from recsys_core.privacy.ledger import (
    DevicePrivacy,
    PrivacyLedger,
    build_ledger,
    local_privacy_record,
    user_level_privacy_record,
)
from recsys_core.privacy.user_level import user_level_epsilon
from server.run_directory import LEDGER_FILE


def run_ledger(config: FederatedConfig, num_devices: int, rounds: Sequence[RoundRecord]) -> PrivacyLedger | None:
    """The ledger of a run from its round records; None when the run used no DP.

    A device's rounds joined counts every round in which its update left the device
    (aggregated, rejected or in a discarded round alike). Its local schedule is the
    latest accountant history it reported: the device's accountant is cumulative.
    """
    privacy = config.privacy
    if not privacy.enabled:
        return None
    joined: Counter[int] = Counter()
    histories: dict[int, tuple[ScheduleEntry, ...]] = {}
    for record in rounds:
        joined.update(record.joined)
        for reported in record.local_privacy:
            histories[reported.partition] = reported.history
    epsilon_of: dict[tuple[ScheduleEntry, ...], float] = {}
    devices = []
    for partition in range(num_devices):
        if not privacy.local.enabled:
            devices.append(DevicePrivacy(str(partition), joined[partition], 0, (), None))
            continue
        history = histories.get(partition, ())
        if history not in epsilon_of:  # many devices share a schedule; PRV costs ~0.1 s each
            epsilon_of[history] = compute_epsilon(history, privacy.local.target_delta, privacy.local.accountant)
        devices.append(DevicePrivacy(str(partition), joined[partition], sum(e.steps for e in history), history,
                                     epsilon_of[history]))
    local = None
    if privacy.local.enabled:
        local = local_privacy_record(
            accountant=privacy.local.accountant, noise_multiplier=privacy.local.noise_multiplier,
            clip_norm=privacy.local.per_sample_clip_norm, delta=privacy.local.target_delta,
            target_epsilon=privacy.local.target_epsilon, devices=devices)
    user_level = None
    if privacy.user_level.enabled:
        settings = privacy.user_level
        central = settings.noise_placement == "central"
        epsilon = user_level_epsilon(
            noise_multiplier=settings.noise_multiplier,
            rounds=len(rounds),
            devices_per_round=config.server.devices_per_round,
            num_devices=num_devices,
            delta=settings.target_delta,
            max_rounds_joined=max(joined.values(), default=0),
            accountant=settings.accountant,
            # Clients are drawn as a fixed-size set (recsys_core.federated.sampling), and under
            # distributed noise the server sees who sent masked updates.
            sampling="fixed_size",
            participation_hidden=central,
        )
        user_level = user_level_privacy_record(
            noise_placement=settings.noise_placement, clip_norm=settings.clip_norm,
            min_surviving_devices=settings.min_surviving_devices if not central else 1,
            num_devices=num_devices, devices_per_round=config.server.devices_per_round, epsilon=epsilon)
    return build_ledger(devices=devices, local=local, user_level=user_level)


def privacy_summary(ledger: PrivacyLedger) -> dict[str, Any]:
    """The headline figures of a ledger, for summary.json and the end-of-run table."""
    summary: dict[str, Any] = {"ledger": LEDGER_FILE}
    if ledger.local is not None:
        local = ledger.local
        summary["local"] = {
            "unit_of_privacy": local.unit_of_privacy, "accountant": local.accountant, "delta": local.delta,
            "target_epsilon": local.target_epsilon, "epsilon_min": local.epsilon.minimum,
            "epsilon_median": local.epsilon.median, "epsilon_max": local.epsilon.maximum,
            "sampling": "Poisson sampling of each device's examples (Opacus DP-SGD)"}
    if ledger.user_level is not None:
        epsilon = ledger.user_level.epsilon
        summary["user_level"] = {
            "unit_of_privacy": ledger.user_level.unit_of_privacy, "accountant": epsilon.accountant,
            "delta": epsilon.delta, "noise_placement": ledger.user_level.noise_placement,
            "claimed": epsilon.claimed, "claimed_epsilon": epsilon.claimed_epsilon,
            "epsilon_with_amplification": epsilon.with_amplification,
            "epsilon_without_amplification": epsilon.without_amplification,
            "reason": epsilon.reason, "sampling": epsilon.sampling_assumption}
    return summary
