"""The main job: what ``fedrec simulate`` runs when it is given no config, private by default.

Private federated item k-NN (:mod:`recsys_core.models.item_knn`) with every device in
every round, user-level DP with distributed noise, and secure aggregation: the server
learns six noisy sums (the item counts, then the co-occurrence table five times) and
nothing else. Its ML-100K result against Popularity is in docs/benchmarks.md, "Private
by default".
``simulations/configs/<dataset>/item_knn.toml`` holds the same settings as a file.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from recsys_core.models.item_knn import ItemKNN, ItemKNNConfig

#: Users (one device each) of the datasets the main job runs on.
MAIN_JOB_DEVICES = {"ml-100k": 943, "synthetic": 500}
#: Epsilon 8 at delta 1e-4 over the model's six rounds, RDP accountant, no sampling assumed
#: (Opacus's bisection gives 1.4258; rounded up, so the run spends 7.993).
MAIN_JOB_NOISE_MULTIPLIER = 1.426
MAIN_JOB_DELTA = 1e-4
#: Distributed noise shares are sized so that this fraction of the devices carries the full noise.
SURVIVING_FRACTION = 0.95


def main_job_values(dataset: str) -> dict[str, Any]:
    """The main job's config values for ``dataset`` (one of :data:`MAIN_JOB_DEVICES`)."""
    devices = MAIN_JOB_DEVICES[dataset]
    return {
        "seed": 0,
        "data": {"dataset": dataset},
        "model": {"name": ItemKNN.name, "options": dataclasses.asdict(ItemKNNConfig())},
        "server": {
            "rounds": ItemKNNConfig().statistics_rounds,
            "devices_per_round": devices,
            "strategy": "fedavg",
            # FedAvg divides the sum by devices_per_round; this multiplies it back to the sum over users.
            "server_learning_rate": float(devices),
            "evaluate_every": 0,
            "devices_per_evaluation": devices,
        },
        "privacy": {"user_level": {
            "enabled": True,
            "clip_norm": 1.0,
            "noise_multiplier": MAIN_JOB_NOISE_MULTIPLIER,
            "noise_placement": "distributed",
            "min_surviving_devices": int(SURVIVING_FRACTION * devices),
            "target_delta": MAIN_JOB_DELTA,
            "target_epsilon": 8.0,
        }},
        "secure_aggregation": {"enabled": True},
    }
