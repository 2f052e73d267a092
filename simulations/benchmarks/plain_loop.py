"""A federated run as a plain Python loop, without Flower: the baseline of the overhead benchmark.

It samples the same partitions per round as the ServerApp (``FederatedRun.sample``'s
rule), runs the same device update (``train_on_device``) one client after another,
and ends each round with the ServerApp's own aggregation core
(:func:`recsys_core.federated.aggregation.apply_round`: gates, DP noise, server step).
Use it to measure what Flower adds, and to tune federated hyper-parameters quickly.

    python -m simulations.benchmarks.plain_loop --config simulations/configs/ml-100k/neumf.toml \
        --data-dir ../shared/datasets [--set server.rounds=50] [--evaluate-every 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from recsys_core.config import apply_overrides, read_toml
from recsys_core.federated.aggregation import apply_round, server_optimizer, sum_plain_updates
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.data import FederatedData, load_federated_data
from recsys_core.federated.device import evaluate_on_device, train_on_device
from recsys_core.federated.device_model import build_device_model
from recsys_core.federated.sampling import EVALUATION, TRAINING, sample_partitions
from recsys_core.federated.state import DeviceState, state_to_arrays
from recsys_core.metrics import MetricSums

Arrays = dict[str, np.ndarray]


def evaluate_all(config: FederatedConfig, data: FederatedData, shared: Arrays, states: dict[int, DeviceState],
                 partitions: list[int], part: str, per_device: dict[int, dict[str, float]] | None = None
                 ) -> dict[str, float]:
    """Mean metrics over ``partitions``; ``per_device`` (when given) receives each device's metric sums."""
    total = MetricSums()
    for partition in partitions:
        sums = evaluate_on_device(config, data.device_split(partition), shared, states.get(partition), part,
                                  partition)
        if per_device is not None:
            per_device[partition] = {"users": sums.num_users, **sums.sums}
        total.add(sums)
    return total.means()


def run_plain_loop(config: FederatedConfig, evaluate_every: int = 0,
                   on_round: Callable[[dict], None] | None = None, test_devices: int = 0) -> dict:
    """Runs ``config.server.rounds`` rounds; returns per-round seconds and the final test metrics.

    ``test_devices``: test on that many seeded clients instead of all (large federations).
    """
    data = load_federated_data(config.data, config.partition)
    shared = state_to_arrays(build_device_model(config, data.catalog, 1, 0).shared_state())
    states: dict[int, DeviceState] = {}
    rounds = []
    optimizer = server_optimizer(config)
    for server_round in range(1, config.server.rounds + 1):
        started = time.perf_counter()
        updates = []
        declined = 0
        sampled = sample_partitions(config.seed, server_round, TRAINING, range(data.num_devices),
                                    config.server.devices_per_round)
        for partition in sampled:
            outcome = train_on_device(config, data.device_split(partition), shared, states.get(partition),
                                      server_round, partition)
            states[partition] = outcome.device_state
            declined += outcome.declined
            if not outcome.declined:
                updates.append((outcome.payload, outcome.num_examples, outcome.train_loss))
        result = apply_round(config, shared, sum_plain_updates(config, shared, updates), optimizer, server_round)
        shared = result.arrays
        record = {"round": server_round, "seconds": time.perf_counter() - started, "declined": declined,
                  "status": result.status}
        if evaluate_every and server_round % evaluate_every == 0:
            evaluated = sample_partitions(config.seed, server_round, EVALUATION, range(data.num_devices),
                                          config.server.devices_per_evaluation)
            record["validation"] = evaluate_all(config, data, shared, states, evaluated, "valid")
        rounds.append(record)
        if on_round is not None:
            on_round(record)
    tested = list(range(data.num_devices))
    if test_devices:
        tested = sample_partitions(config.seed, 0, EVALUATION, tested, test_devices)
    test_per_device: dict[int, dict[str, float]] = {}
    test = evaluate_all(config, data, shared, states, tested, "test", test_per_device)
    return {"rounds": rounds, "test": test, "test_per_device": test_per_device}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--data-dir")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--evaluate-every", type=int, default=0)
    parser.add_argument("--test-devices", type=int, default=0,
                        help="test on this many seeded devices instead of all (large federations)")
    parser.add_argument("--per-device-output", metavar="JSON",
                        help="write each test device's metric sums here, for paired comparisons of runs "
                             "(simulations.benchmarks.paired_comparison)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = ([f'data.data_dir="{args.data_dir}"'] if args.data_dir else []) + args.set
    config = FederatedConfig.from_dict(apply_overrides(read_toml(args.config), overrides)).validate()

    def show(record: dict) -> None:
        validation = record.get("validation", {})
        print(f"round {record['round']}: {record['seconds']:.2f} s"
              + (f"  valid ndcg@10 {validation['full/ndcg@10']:.4f}" if validation else ""), flush=True)

    result = run_plain_loop(config, args.evaluate_every, show, args.test_devices)
    if args.per_device_output:
        with open(args.per_device_output, "w", encoding="utf-8") as handle:
            json.dump({str(partition): sums for partition, sums in result["test_per_device"].items()}, handle)
    print(json.dumps({"test": {k: v for k, v in result["test"].items() if k.endswith("@10")},
                      "mean_round_seconds": float(np.mean([r["seconds"] for r in result["rounds"]]))}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
