"""The cohort engine against Flower's, side by side in one run: the same model, and device updates per second.

For each devices-per-round count, runs the same seeded rounds three ways on this machine
and compares them:

- ``flower``: ``fedrec simulate``'s engine (Ray workers, Flower messages);
- ``cohort``: the cohort engine, each device's update one by one (``simulation.batching = "off"``);
- ``batched``: the cohort engine's one-step fast path, where the config allows it.

Round 1 (Ray workers starting, data loading) is reported apart and left out of the means.
The final global models are compared coordinate by coordinate (max abs difference against
Flower's). DP noise is drawn from OS entropy on purpose, so DP configs are compared by
throughput only.

    python -m simulations.benchmarks.engines --config simulations/configs/ml-100k/sasrec.toml \
        --data-dir ../shared/datasets --devices 100 [1000] --rounds 5 [--engines flower cohort batched]

Prints one JSON line per run and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from recsys_core.config import apply_overrides, read_toml
from recsys_core.federated.config import FederatedConfig
from server.simulate import run_federated_simulation

ENGINE_SETTINGS = {
    "flower": ['simulation.engine="flower"'],
    "cohort": ['simulation.engine="cohort"', 'simulation.batching="off"'],
    "batched": ['simulation.engine="cohort"', 'simulation.batching="on"'],
}


def run_engine(base: dict, overrides: list[str], engine: str, output: Path) -> dict:
    config = FederatedConfig.from_dict(apply_overrides(base, overrides + ENGINE_SETTINGS[engine])).validate()
    started = time.perf_counter()
    directory, _ = run_federated_simulation(config, run_dir=str(output / engine))
    wall = time.perf_counter() - started
    rounds = directory.read_rounds()
    seconds = [record.seconds for record in rounds]
    updates = [record.participants for record in rounds]
    steady = seconds[1:] or seconds
    with np.load(directory.path / "final-model" / "parameters.npz") as stored:
        model = {name: stored[name] for name in stored.files}
    return {"engine": engine, "round_1_seconds": seconds[0], "seconds_per_round": float(np.mean(steady)),
            "device_updates_per_second": float(sum(updates[1:] or updates) / max(sum(steady), 1e-9)),
            "wall_seconds": wall, "model": model}


def max_difference(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> float:
    return max(float(np.max(np.abs(first[name].astype(np.float64) - second[name]))) for name in first)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--data-dir")
    parser.add_argument("--devices", type=int, nargs="+", default=[100])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--engines", nargs="+", default=list(ENGINE_SETTINGS), choices=list(ENGINE_SETTINGS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    base = read_toml(args.config)
    rows = []
    for devices in args.devices:
        overrides = [f"server.devices_per_round={devices}", f"server.rounds={args.rounds}",
                     "server.evaluate_every=0", "server.final_evaluation=false", *args.set]
        if args.data_dir:
            overrides.append(f'data.data_dir="{args.data_dir}"')
        results = {}
        with tempfile.TemporaryDirectory() as output:
            for engine in args.engines:
                results[engine] = run_engine(base, overrides, engine, Path(output) / str(devices))
        models = {engine: result.pop("model") for engine, result in results.items()}
        reference = results.get("flower")
        for engine, result in results.items():
            result.update(config=args.config, devices_per_round=devices,
                          speedup=(result["device_updates_per_second"] / reference["device_updates_per_second"]
                                   if reference and reference["device_updates_per_second"] > 0 else None),
                          max_abs_difference=(max_difference(models["flower"], models[engine]) if reference
                                              else None))
            rows.append(result)
            print(json.dumps(result), flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS of this process (cohort engines; Ray workers not included): {peak:.0f} MiB\n")
    print("| devices/round | engine | s/round | device updates/s | x Flower | max abs diff vs Flower |")
    print("|---:|---|---:|---:|---:|---:|")
    for row in rows:
        speedup = f"{row['speedup']:.1f}" if row["speedup"] is not None else ""
        difference = f"{row['max_abs_difference']:.1e}" if row["max_abs_difference"] is not None else ""
        print(f"| {row['devices_per_round']} | {row['engine']} | {row['seconds_per_round']:.3f} | "
              f"{row['device_updates_per_second']:.1f} | {speedup} | {difference} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
