"""What a cohort-engine round with every device costs: seconds per round, peak memory, memory per device.

For each population, runs ``--rounds`` rounds in which every device of the federation
trains (``server.devices_per_round`` = all of them, no evaluation) on the cohort engine,
each population in its own child process so that its peak RSS is its own. Populations:

- a registered dataset name (``amazon-beauty``: 22,363 devices; ``amazon-sports``: 35,598);
- ``synthetic-N``: the synthetic generator with N users of ``--synthetic-items`` items
  (the generator holds dense users x items matrices, so a large N needs a small catalogue).

    python -m simulations.benchmarks.cohort_scale --config simulations/configs/amazon-beauty/neumf-cohort.toml \
        --data-dir ../shared/datasets --populations amazon-beauty amazon-sports synthetic-200000 --rounds 2

Prints one JSON line per population and a Markdown table. "state/device" is what the
engine keeps per device between rounds (private parameters, optimiser state, accountant),
from the run's ``devices/cohort-states.npz``; "RSS/device" is the whole process's peak
divided by the devices, an upper bound that includes the data and the model.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from recsys_core.config import apply_overrides, read_toml
from recsys_core.federated.cohort_state import COHORT_STATES_FILE, CohortStates
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.data import load_federated_data
from server.simulate import run_federated_simulation

SYNTHETIC_PREFIX = "synthetic-"


def population_overrides(population: str, data_dir: str | None, synthetic_items: int) -> list[str]:
    """The config overrides that select ``population``'s data."""
    if population.startswith(SYNTHETIC_PREFIX):
        users = int(population.removeprefix(SYNTHETIC_PREFIX))
        return ['data.dataset="synthetic"', f"data.synthetic.n_users={users}",
                f"data.synthetic.n_items={synthetic_items}", "data.synthetic.mean_interactions_per_user=10.0"]
    return [f'data.dataset="{population}"'] + ([f'data.data_dir="{data_dir}"'] if data_dir else [])


def measure(config: FederatedConfig, output: Path) -> dict:
    """Runs the config with every device in every round; the figures of one population."""
    started = time.perf_counter()
    data = load_federated_data(config.data, config.partition)
    load_seconds = time.perf_counter() - started
    devices = data.num_devices
    del data
    config = FederatedConfig.from_dict(apply_overrides(json.loads(config.to_json()), [
        f"server.devices_per_round={devices}", f"server.min_devices={devices}"])).validate()
    directory, _ = run_federated_simulation(config, run_dir=str(output))
    seconds = [record.seconds for record in directory.read_rounds()]
    states_file = directory.path / "devices" / COHORT_STATES_FILE
    state_bytes = CohortStates.load_newest(states_file).nbytes() if states_file.exists() else 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"devices": devices, "data_load_seconds": load_seconds, "round_seconds": seconds,
            "seconds_per_round": sum(seconds[1:] or seconds) / len(seconds[1:] or seconds),
            "device_updates_per_second": devices / (sum(seconds[1:] or seconds) / len(seconds[1:] or seconds)),
            "peak_rss_bytes": peak, "state_bytes_per_device": state_bytes / devices,
            "rss_bytes_per_device": peak / devices}


def child(args: argparse.Namespace) -> int:
    overrides = [*population_overrides(args.child, args.data_dir, args.synthetic_items),
                 f"server.rounds={args.rounds}", "server.evaluate_every=0", "server.final_evaluation=false",
                 'simulation.engine="cohort"', *args.set]
    config = FederatedConfig.from_dict(apply_overrides(read_toml(args.config), overrides))
    with tempfile.TemporaryDirectory() as output:
        result = measure(config, Path(output) / "run")
    print(json.dumps({"population": args.child, "config": args.config, **result}), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--data-dir")
    parser.add_argument("--populations", nargs="+", default=["amazon-beauty", "amazon-sports"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--synthetic-items", type=int, default=500)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    rows = []
    for population in args.populations:
        command = [sys.executable, "-m", "simulations.benchmarks.cohort_scale", "--config", args.config,
                   "--child", population, "--rounds", str(args.rounds), "--synthetic-items", str(args.synthetic_items)]
        command += ["--data-dir", args.data_dir] if args.data_dir else []
        for override in args.set:
            command += ["--set", override]
        finished = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [line for line in finished.stdout.splitlines() if line.startswith("{")]
        if finished.returncode != 0 or not lines:
            print(f"{population}: failed (exit {finished.returncode}):\n{finished.stderr[-2000:]}", file=sys.stderr)
            continue
        print(lines[-1], flush=True)
        rows.append(json.loads(lines[-1]))
    print("\n| population | devices | s/round | device updates/s | peak RSS | RSS/device | state/device |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['population']} | {row['devices']:,} | {row['seconds_per_round']:.2f} | "
              f"{row['device_updates_per_second']:,.0f} | {row['peak_rss_bytes'] / 2**30:.2f} GiB | "
              f"{row['rss_bytes_per_device'] / 1024:.1f} KiB | {row['state_bytes_per_device']:.0f} B |")
    return 0 if len(rows) == len(args.populations) else 1


if __name__ == "__main__":
    sys.exit(main())
