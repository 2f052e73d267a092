"""What the server's defences against hostile plain updates cost, and what they buy, side by side in one run.

For a round of ``--devices`` updates the size of ML-100K NeuMF's shared parameters (the
model-zoo config's options), it times the server's work on them: the norm screen
(:func:`recsys_core.federated.robust.screen_updates`) and the sum under each
``server.aggregation`` (FedAvg's weighted ``mean``, ``median``, ``trimmed_mean``). Then it
adds hostile devices that each send the honest direction scaled just under the norm screen's
bound (9x the median norm, which the screen lets through) and reports how far each
aggregate lands from the honest devices' aggregate, relative to the honest mean update's norm.

    python -m simulations.benchmarks.robust_aggregation [--devices 100 1000] [--hostile 1 5] [--repeats 3]

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from recsys_core.config import read_toml
from recsys_core.federated.aggregation import sum_plain_updates
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.device_model import build_device_model
from recsys_core.federated.robust import screen_updates, update_norm
from recsys_core.federated.state import state_to_arrays
from recsys_core.models import CatalogInfo

METHODS = ("mean", "median", "trimmed_mean")


def shared_arrays() -> dict[str, np.ndarray]:
    values = read_toml("simulations/configs/ml-100k/neumf.toml")
    values["private"] = False
    config = FederatedConfig.from_dict(values)
    model = build_device_model(config, CatalogInfo(943, 1682), 1, 0)
    return state_to_arrays(model.shared_state())


def honest_updates(current: dict[str, np.ndarray], count: int, seed: int) -> list[tuple[int, dict, int, float]]:
    """Updates around a common direction, as a round's devices send: shared drift plus each device's own noise."""
    generator = np.random.default_rng(seed)
    drift = {name: generator.normal(0, 0.01, value.shape) for name, value in current.items()}
    updates = []
    for partition in range(count):
        arrays = {name: (value + drift[name] + generator.normal(0, 0.02, value.shape)).astype(value.dtype)
                  for name, value in current.items()}
        updates.append((partition, arrays, int(generator.integers(20, 200)), 0.5))
    return updates


def config_for(method: str) -> FederatedConfig:
    return FederatedConfig.from_dict({"server": {"aggregation": method, "trim_fraction": 0.1}, "private": False})


def mean_update(config: FederatedConfig, current: dict, updates: list) -> dict[str, np.ndarray]:
    round_sum = sum_plain_updates(config, current, [update[1:] for update in updates])
    return {name: value / round_sum.weight_sum for name, value in round_sum.update_sum.items()}


def distance(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum((first[name] - second[name]) ** 2) for name in first)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--hostile", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    current = shared_arrays()
    size = sum(value.size for value in current.values())
    print(f"{size:,} shared parameters per update (ML-100K NeuMF)\n")
    print("| devices | server work | seconds per round | x mean |")
    print("|---:|---|---:|---:|")
    for count in args.devices:
        updates = honest_updates(current, count, seed=count)
        timings = {}
        started = time.perf_counter()
        for _ in range(args.repeats):
            screen_updates(config_for("mean"), current, updates)
        timings["norm screen"] = (time.perf_counter() - started) / args.repeats
        for method in METHODS:
            started = time.perf_counter()
            for _ in range(args.repeats):
                mean_update(config_for(method), current, updates)
            timings[method] = (time.perf_counter() - started) / args.repeats
        for name, seconds in timings.items():
            print(f"| {count} | {name} | {seconds:.3f} | {seconds / timings['mean']:.2f} |")
    print("\n| devices | hostile | aggregate | distance from the honest aggregate / honest mean update norm |")
    print("|---:|---:|---|---:|")
    for count in args.devices:
        updates = honest_updates(current, count, seed=count)
        honest = mean_update(config_for("mean"), current, updates)
        scale = float(np.sqrt(sum(np.sum(value ** 2) for value in honest.values())))
        norms = [update_norm(current, arrays) for _, arrays, _, _ in updates]
        median_norm = float(np.median(norms))
        for hostile in args.hostile:
            # Each hostile device sends the opposite of the honest direction at 9x the median norm, with the
            # largest example count any device has: the worst that passes the screen and the count bound.
            direction = {name: -value / scale for name, value in honest.items()}
            attack = [(count + index, {name: (current[name] + 9 * median_norm * direction[name])
                                       .astype(current[name].dtype) for name in current}, 200, 0.5)
                      for index in range(hostile)]
            kept, rejected = screen_updates(config_for("mean"), current, updates[: count - hostile] + attack)
            assert not rejected, "the attack was meant to pass the norm screen"
            for method in METHODS:
                reference = mean_update(config_for(method), current, updates[: count - hostile])
                measured = mean_update(config_for(method), current, kept)
                print(f"| {count} | {hostile} | {method} | {distance(measured, reference) / scale:.2f} |")


if __name__ == "__main__":
    main()
