"""The server's part of differential privacy: the DP-FedAvg step and the run's privacy ledger.

The maths lives in :mod:`recsys_core.privacy`; this module applies it to a round's
replies and turns the round log (``rounds.jsonl``: who sent an update in which round,
and each device's accountant history) into the ledger a reviewer can recompute.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np
from flwr.serverapp.strategy import FedAdam

from recsys_core.federated.config import FederatedConfig
from recsys_core.privacy.accountant import PrivacyAccountant, ScheduleEntry, compute_epsilon
from recsys_core.privacy.ledger import (
    ClientPrivacy,
    PrivacyLedger,
    build_ledger,
    local_privacy_record,
    user_level_privacy_record,
)
from recsys_core.privacy.user_level import clip_update, noisy_mean_update, user_level_epsilon
from server.strategies import apply_mean_update

Arrays = dict[str, np.ndarray]

LEDGER_FILE = "privacy-ledger.json"


def user_level_step(config: FederatedConfig, current: Arrays, updates: list[Arrays], fedadam: FedAdam | None = None,
                    server_round: int = 1, evidence: dict[str, Any] | None = None) -> Arrays:
    """The new global shared parameters from the noisy mean of the clipped updates.

    FedAvg: current + server lr * mean. With ``fedadam`` (Flower's strategy, for its
    settings and moments) the noisy mean is FedAdam's pseudo-gradient; either is
    post-processing of the noisy mean, so the guarantee is the same.

    Central noise is drawn from OS entropy: the run seed is public, and noise that can be
    regenerated from it could be subtracted from the released model. A DP run therefore
    does not replay bit for bit, by design.

    ``evidence``, when given, receives what the server can attest about this step for the
    round log and the audit: the mechanism's settings, the largest update norm it received
    (before its own clipping), and under central noise the standard deviation of the
    noise it actually added, measured as the noisy sum minus the clipped sum.
    """
    user_level = config.privacy.user_level
    central = user_level.noise_placement == "central"
    mean = noisy_mean_update(
        updates,
        expected_clients=config.server.clients_per_round,
        clip_norm=user_level.clip_norm,
        central_noise_multiplier=user_level.noise_multiplier if central else None,
        generator=np.random.default_rng(),
    )
    if evidence is not None:
        evidence.update(_step_evidence(config, updates, mean))
    return apply_mean_update(fedadam, current, mean, server_round, config.server.learning_rate_at(server_round))


def _step_evidence(config: FederatedConfig, updates: list[Arrays], noisy_mean: Arrays) -> dict[str, Any]:
    user_level = config.privacy.user_level
    expected = config.server.clients_per_round
    clipped = [clip_update(update, user_level.clip_norm) for update in updates]
    evidence: dict[str, Any] = {
        "noise_multiplier": user_level.noise_multiplier, "clip_norm": user_level.clip_norm,
        "noise_placement": user_level.noise_placement, "expected_clients": expected, "updates": len(updates),
        "largest_update_norm": max((norm for _, norm in clipped), default=0.0)}
    if user_level.noise_placement == "central":
        noise = np.concatenate([
            (noisy_mean[name] * expected - sum(np.asarray(update[name], dtype=np.float64) for update, _ in clipped))
            .ravel() for name in noisy_mean])
        evidence["noise_std_measured"] = float(np.std(noise))
        evidence["noise_coordinates"] = int(noise.size)
        evidence["noise_std_declared"] = user_level.noise_multiplier * user_level.clip_norm
    return evidence


def run_ledger(config: FederatedConfig, num_clients: int, rounds: list[dict[str, Any]]) -> PrivacyLedger | None:
    """The ledger of a run from its round records; None when the run used no DP.

    A client's rounds joined counts every round in which its update left the device
    (aggregated, rejected or in a discarded round alike). Its local schedule is the
    latest accountant history it reported: the device's accountant is cumulative.
    """
    privacy = config.privacy
    if not privacy.enabled:
        return None
    joined: Counter[int] = Counter()
    histories: dict[int, tuple[ScheduleEntry, ...]] = {}
    for record in rounds:
        joined.update(int(partition) for partition in record.get("joined", []))
        for partition, state in record.get("local_privacy", {}).items():
            histories[int(partition)] = PrivacyAccountant.from_dict(json.loads(state)).history
    epsilon_of: dict[tuple[ScheduleEntry, ...], float] = {}
    clients = []
    for partition in range(num_clients):
        if not privacy.local.enabled:
            clients.append(ClientPrivacy(str(partition), joined[partition], 0, (), None))
            continue
        history = histories.get(partition, ())
        if history not in epsilon_of:  # many devices share a schedule; PRV costs ~0.1 s each
            epsilon_of[history] = compute_epsilon(history, privacy.local.target_delta, privacy.local.accountant)
        clients.append(ClientPrivacy(str(partition), joined[partition], sum(e.steps for e in history), history,
                                     epsilon_of[history]))
    local = None
    if privacy.local.enabled:
        local = local_privacy_record(
            accountant=privacy.local.accountant, noise_multiplier=privacy.local.noise_multiplier,
            clip_norm=privacy.local.per_sample_clip_norm, delta=privacy.local.target_delta,
            target_epsilon=privacy.local.target_epsilon, clients=clients)
    user_level = None
    if privacy.user_level.enabled:
        settings = privacy.user_level
        central = settings.noise_placement == "central"
        epsilon = user_level_epsilon(
            noise_multiplier=settings.noise_multiplier,
            rounds=len(rounds),
            clients_per_round=config.server.clients_per_round,
            num_clients=num_clients,
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
            min_surviving_clients=settings.min_surviving_clients if not central else 1,
            num_clients=num_clients, clients_per_round=config.server.clients_per_round, epsilon=epsilon)
    return build_ledger(clients=clients, local=local, user_level=user_level)


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
