"""What Flower's simulation engine adds to a round, measured side by side in one run.

For each clients-per-round count, runs the same rounds twice on the same machine:
through ``fedrec simulate``'s engine (Ray workers, Flower messages) and as a plain
Python loop calling the same device update for the same sampled clients. Round 1
(Ray workers starting, data loading) is reported but left out of the means.

    python -m simulations.benchmarks.federated_overhead --data-dir ../shared/datasets \
        [--config simulations/configs/ml-100k/neumf.toml] [--clients 10 50 100] [--rounds 4]

Prints a Markdown table: seconds per round for each, their ratio, and the framework
time per client (Flower's round time x workers minus the plain loop's, over clients).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from recsys_core.config import apply_overrides, read_toml
from recsys_core.federated.config import FederatedConfig
from recsys_core.training import torch_threads
from server.simulate import run_federated_simulation
from simulations.benchmarks.plain_loop import run_plain_loop


def measure(config: FederatedConfig) -> dict:
    with tempfile.TemporaryDirectory() as output:
        directory, _ = run_federated_simulation(config, run_dir=str(Path(output) / "run"))
        flower = [record.seconds for record in directory.read_rounds()]
    # Like for like: a Flower worker runs each device with torch_threads_per_device threads.
    with torch_threads(config.simulation.torch_threads_per_device):
        plain = [record["seconds"] for record in run_plain_loop(config)["rounds"]]
    return {"flower_round_1": flower[0], "flower": float(np.mean(flower[1:])),
            "plain_round_1": plain[0], "plain": float(np.mean(plain[1:]))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="simulations/configs/ml-100k/neumf.toml")
    parser.add_argument("--data-dir")
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--workers", type=int, default=0, help="Ray workers (0: one per core)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    base = read_toml(args.config)
    rows = []
    for clients in args.clients:
        overrides = [f"server.devices_per_round={clients}", f"server.rounds={args.rounds}",
                     "server.evaluate_every=0", "server.final_evaluation=false",
                     f"simulation.max_workers={args.workers}", *args.set]
        if args.data_dir:
            overrides.append(f'data.data_dir="{args.data_dir}"')
        config = FederatedConfig.from_dict(apply_overrides(base, overrides)).validate()
        result = measure(config)
        workers = args.workers or os.cpu_count() or 1
        result.update(clients=clients, workers=workers, ratio=result["flower"] / result["plain"],
                      framework_ms_per_client=1000 * (result["flower"] * workers - result["plain"]) / clients)
        rows.append(result)
        print(json.dumps(result), flush=True)
    print("| clients/round | Ray workers | Flower s/round | plain loop s/round | ratio | framework ms/client |")
    print("|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['clients']} | {row['workers']} | {row['flower']:.2f} | {row['plain']:.2f} | "
              f"{row['ratio']:.2f} | {row['framework_ms_per_client']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
