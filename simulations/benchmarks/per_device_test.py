"""Each device's test metric sums for a finished cohort-engine run, for paired comparisons of runs.

A federated server only ever sees the sum of the devices' metrics; a simulation can look
at each device, which is what a paired comparison against Popularity on the same devices
needs (``simulations.benchmarks.paired_comparison``). This reads the run's final model and,
for models with private parameters, every device's state from ``devices/cohort-states.npz``,
then evaluates every device as the run's final test did: devices without private state
together (per user), the others one by one.

    python -m simulations.benchmarks.per_device_test RUN_DIR --output runs/beauty/sasrec.json

Writes ``{partition: {"users": n, metric: sum over its users, ...}}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from recsys_core.data.sampling import SeenItems
from recsys_core.federated.cohort import DeviceError, evaluate_cohort
from recsys_core.federated.cohort_batch import EVALUATION_CHUNK, evaluation_blockers
from recsys_core.federated.cohort_state import CohortStates
from recsys_core.federated.config import FederatedConfig, config_from_json
from recsys_core.federated.data import FederatedData, load_federated_data
from recsys_core.federated.device_model import fresh_device_model, load_device_model
from recsys_core.federated.state import Arrays
from recsys_core.models import CatalogInfo
from recsys_core.training import evaluate_model
from server.cohort_engine import COHORT_STATES_FILE
from server.run_directory import RunDirectory

PerDevice = dict[int, dict[str, float]]


def evaluate_together(config: FederatedConfig, data: FederatedData, shared: Arrays) -> PerDevice:
    """Per-user metrics of every device, many devices at a time, summed into their devices."""
    partitioner = data.partitioners[0]
    results: PerDevice = {}
    partitions = list(range(data.num_devices))
    for start in range(0, len(partitions), EVALUATION_CHUNK):
        chunk = partitions[start:start + EVALUATION_CHUNK]
        split = data.cohort_split(chunk)
        model = fresh_device_model(config, CatalogInfo.from_log(split.train), split.train.n_users, 0)
        load_device_model(model, shared, None)
        per_user: dict[int, dict[str, float]] = {}
        evaluate_model(model, split, "test", SeenItems.from_logs(split.train, split.valid, split.test),
                       config.evaluation, per_user)
        users = np.sort(np.concatenate([partitioner.users_of(p) for p in chunk]))
        for partition in chunk:
            sums: dict[str, float] = {"users": 0}
            for local in np.searchsorted(users, partitioner.users_of(partition)).tolist():
                if local in per_user:
                    sums["users"] += 1
                    for name, value in per_user[local].items():
                        sums[name] = sums.get(name, 0.0) + value
            results[partition] = sums
        print(f"{min(start + EVALUATION_CHUNK, len(partitions))}/{len(partitions)} devices", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--data-dir", help="where the datasets are, if not where the run read them")
    args = parser.parse_args()
    directory = RunDirectory(args.run_dir)
    values = json.loads((directory.path / "config.json").read_text(encoding="utf-8"))
    if args.data_dir:
        values["data"]["data_dir"] = args.data_dir
    config = config_from_json(json.dumps(values))
    torch.set_num_threads(config.simulation.cohort_threads or torch.get_num_threads())
    data = load_federated_data(config.data, config.partition)
    with np.load(directory.path / "final-model" / "parameters.npz") as stored:
        shared = {name: stored[name] for name in stored.files}
    if not evaluation_blockers(config):
        results = evaluate_together(config, data, shared)
    else:
        states = CohortStates.load(directory.devices / COHORT_STATES_FILE, config.server.rounds)
        evaluated = evaluate_cohort(config, data, shared, states, list(range(data.num_devices)), "test")
        results = {}
        for partition, sums in evaluated.items():
            if isinstance(sums, DeviceError):
                raise SystemExit(f"partition {partition} failed to evaluate: {sums.reason}")
            results[partition] = {"users": sums.num_users, **sums.sums}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({str(p): sums for p, sums in sorted(results.items())}), encoding="utf-8")
    print(f"wrote {len(results)} devices' test sums to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
