"""Deployed round time against the simulated round for the same config, and where a deployed round goes.

    python -m simulations.benchmarks.deployment_rounds [--rounds 4] [--output runs/benchmarks/deployment.json]

Runs, one after the other on this machine:

1. the deployment of ``simulations/examples/local_deployment.py``: a TLS SuperLink with node
   authentication, three SuperNodes on app devices' encrypted stores, ``flwr run`` of the app
   with secure aggregation and user-level DP (distributed noise);
2. ``fedrec simulate`` of the same run config on Flower's simulation engine (its devices hold
   the synthetic partitions instead of the stores: the same model, sizes and protocol).

It prints each round's seconds (rounds.jsonl) and the ratio of the medians, then the parts of
a deployed exchange this code controls: the seconds a fresh process takes to import the
ClientApp (what a SuperNode pays per message, Flower 1.42 starting one process per message)
and to import the training code on top. Flower's own fixed waits, from its source: a
SuperNode asks the SuperLink for a message every 3 s while idle and checks for a finished
reply every 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from recsys_core.config import read_toml
from recsys_core.federated.config import FederatedConfig
from recsys_core.run_records import write_json
from server.simulate import run_federated_simulation
from simulations.examples.local_deployment import (
    LocalDeployment,
    federation_manifest,
    initial_bundle,
    run_config,
    start_app_supernodes,
)

DEVICES = 3


def round_seconds(run_dir: Path) -> list[float]:
    """Each round's wall time as its record states it."""
    lines = (run_dir / "rounds.jsonl").read_text().splitlines()
    return [float(json.loads(line)["seconds"]) for line in lines]


def deployed(folder: Path, rounds: int) -> list[float]:
    deployment = LocalDeployment(folder, supernodes=DEVICES)
    try:
        deployment.start_superlink()
        for public_key in deployment.credentials.supernode_public_keys:
            deployment.register(public_key)
        bundle = initial_bundle(folder / "initial-model", deployment.credentials.bundle_signing_key)
        start_app_supernodes(deployment, bundle, DEVICES)
        run_dir = folder / "run"
        result = deployment.run(run_config(folder, rounds, DEVICES), federation_manifest(folder, bundle, DEVICES),
                                run_dir, timeout=120 * rounds + 300)
        if result.returncode != 0 or not (run_dir / "summary.json").exists():
            raise RuntimeError(f"the deployed run failed; logs in {folder}\n{result.stderr[-2000:]}")
        return round_seconds(run_dir)
    finally:
        deployment.stop()


def simulated(folder: Path, rounds: int) -> list[float]:
    folder.mkdir(parents=True, exist_ok=True)
    values = read_toml(run_config(folder, rounds, DEVICES))
    values["output_dir"] = str(folder / "simulated")
    directory, _ = run_federated_simulation(FederatedConfig.from_dict(values))
    return round_seconds(directory.path)


def import_seconds(statement: str, repeats: int = 3) -> float:
    """Median wall seconds of a fresh interpreter running ``statement`` (what a per-message process pays)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", statement], check=True, timeout=120)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--output", help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="fedrec-deployment-rounds-"))
    print(f"deploying 3 SuperNodes for {args.rounds} rounds (workspace {folder}) ...", flush=True)
    deployed_seconds = deployed(folder / "deployed", args.rounds)
    print(f"deployed rounds (s): {[round(seconds, 1) for seconds in deployed_seconds]}", flush=True)
    print(f"simulating the same config for {args.rounds} rounds ...", flush=True)
    simulated_seconds = simulated(folder / "simulated", args.rounds)
    imports = {
        "python + flwr.clientapp": import_seconds("import flwr.clientapp"),
        "the ClientApp (query messages)": import_seconds("import client.client_app"),
        "the ClientApp + training code (train, evaluate)": import_seconds(
            "import client.client_app, client.device_handlers"),
    }
    ratio = statistics.median(deployed_seconds) / statistics.median(simulated_seconds)
    print("\n| round | deployed s | simulated s |\n|---:|---:|---:|")
    for number, (deployed_round, simulated_round) in enumerate(zip(deployed_seconds, simulated_seconds,
                                                                   strict=True), start=1):
        print(f"| {number} | {deployed_round:.1f} | {simulated_round:.2f} |")
    print(f"\nmedian deployed / simulated: {ratio:.1f}x")
    print("\n| a fresh process imports | seconds |\n|---|---:|")
    for what, seconds in imports.items():
        print(f"| {what} | {seconds:.2f} |")
    if args.output:
        write_json(Path(args.output), {"rounds": args.rounds, "devices": DEVICES, "deployed_seconds": deployed_seconds,
                                       "simulated_seconds": simulated_seconds, "median_ratio": ratio,
                                       "import_seconds": imports})
    return 0


if __name__ == "__main__":
    sys.exit(main())
