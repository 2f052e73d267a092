"""Utility against privacy: federated NeuMF and SASRec at epsilon 1, 3, 8 and infinity, local and user-level DP.

Each cell runs the federated training of ``simulations/benchmarks/plain_loop.py`` (the
same device code as the Flower app, without the engine, so the table fits on a small
machine) and reports full-ranking NDCG@10, sampled HR@10 and seconds per round.

How each epsilon is met (every figure at the delta below, RDP accountant):

* **local** (interaction-level DP-SGD): each device's budget is ``target_epsilon`` = eps.
  The noise multiplier is the one that lets a device at the lower quartile of
  samples take part in the most rounds any device is sampled for; devices with fewer
  samples spend faster and decline once their budget is gone (counted).
* **user_level** (DP-FedAvg, central noise): the noise multiplier makes the claimed,
  unamplified epsilon (the most rounds any user joined, composed at sampling rate 1)
  equal eps. The clip norm C is the median L2 norm of non-private first-round updates
  of 20 devices, measured before the run (a deployment must fix C in advance or
  choose it privately; this choice is not accounted).

    python -m simulations.benchmarks.privacy_utility --data-dir ../shared/datasets \
        [--suites ml-100k-neumf ml-100k-sasrec amazon-beauty-neumf amazon-beauty-sasrec] \
        [--epsilons 1 3 8 inf] [--modes local user_level] [--output runs/benchmarks/privacy-utility.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys_core.config import apply_overrides, read_toml
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.data import load_federated_data
from recsys_core.federated.device import train_on_device
from recsys_core.federated.device_model import build_device_model
from recsys_core.federated.sampling import TRAINING, sample_partitions
from recsys_core.federated.state import state_to_arrays
from recsys_core.models import CatalogInfo
from recsys_core.privacy.accountant import noise_multiplier_for_budget
from recsys_core.privacy.local_dp import PoissonSchedule
from simulations.benchmarks.plain_loop import run_plain_loop

ROOT = Path(__file__).resolve().parents[2]
DELTA = 1e-5  # below 1 / users (943 and 22,363) and below 1 / samples on any device

SASREC_ML100K = [
    'model.name="sasrec"', "model.options={hidden_dim=64, max_length=200, dropout=0.2}",
    'local.optimizer="sgd"', "local.learning_rate=1.0", "local.epochs=1", "local.private_refit_epochs=0",
    'server.strategy="fedadam"', "server.server_learning_rate=0.002", "server.devices_per_round=100",
]
#: (base config, overrides, rounds, test clients) per suite; rounds are cut to fit a small machine.
SUITES: dict[str, tuple[str, list[str], int, int]] = {
    "ml-100k-neumf": ("simulations/configs/ml-100k/neumf.toml", [], 30, 0),
    "ml-100k-sasrec": ("simulations/configs/ml-100k/neumf.toml", SASREC_ML100K, 150, 0),
    "amazon-beauty-neumf": ("simulations/configs/ml-100k/neumf.toml", ['data.dataset="amazon-beauty"'], 30, 2000),
    "amazon-beauty-sasrec": ("simulations/configs/amazon-beauty/sasrec-local-adam.toml", [], 100, 2000),
}


def base_config(suite: str, data_dir: str, rounds_override: int = 0,
                extra: tuple[str, ...] = ()) -> tuple[FederatedConfig, int]:
    path, overrides, rounds, test_devices = SUITES[suite]
    rounds = rounds_override or rounds
    values = apply_overrides(read_toml(ROOT / path), [f'data.data_dir="{data_dir}"', *overrides,
                                                      f"server.rounds={rounds}", "server.evaluate_every=0", *extra])
    return FederatedConfig.from_dict(values).validate(), test_devices


def most_rounds_joined(config: FederatedConfig, num_devices: int) -> int:
    joined: Counter[int] = Counter()
    for server_round in range(1, config.server.rounds + 1):
        joined.update(sample_partitions(config.seed, server_round, TRAINING, range(num_devices),
                                        config.server.devices_per_round))
    return max(joined.values())


def probe_devices(config: FederatedConfig, count: int = 20) -> tuple[int, float]:
    """Lower-quartile DP samples per device, and median L2 norm of a non-private first-round update."""
    data = load_federated_data(config.data, config.partition)
    shared = state_to_arrays(build_device_model(config, data.catalog, 1, 0).shared_state())
    partitions = np.random.default_rng(1).choice(data.num_devices, size=count, replace=False)
    samples, norms = [], []
    for partition in map(int, partitions):
        split = data.device_split(partition)
        model = build_device_model(config, CatalogInfo.from_log(split.train), split.train.n_users, partition)
        batch = model.private_training_samples(split.train, np.random.default_rng(0))
        samples.append(len(next(iter(batch.values()))))
        trained = train_on_device(config, split, shared, None, 1, partition).shared_parameters
        norms.append(math.sqrt(sum(float(np.sum((trained[n] - shared[n]).astype(np.float64) ** 2)) for n in shared)))
    return int(np.percentile(samples, 25)), float(np.median(norms))


def private_overrides(config: FederatedConfig, mode: str, epsilon: float, num_devices: int) -> tuple[list[str], dict]:
    joined = most_rounds_joined(config, num_devices)
    samples, update_norm = probe_devices(config)
    if mode == "local":
        schedule = PoissonSchedule(samples, config.local.batch_size)
        sigma = noise_multiplier_for_budget(target_epsilon=epsilon, delta=DELTA, sampling_rate=schedule.sampling_rate,
                                            steps=joined * schedule.steps(config.local.epochs))
        overrides = ["privacy.local.enabled=true", f"privacy.local.noise_multiplier={sigma}",
                     f"privacy.local.target_epsilon={epsilon}", f"privacy.local.target_delta={DELTA}"]
        return overrides, {"noise_multiplier": sigma, "quartile_samples": samples, "most_rounds_joined": joined}
    sigma = noise_multiplier_for_budget(target_epsilon=epsilon, delta=DELTA, sampling_rate=1.0, steps=joined)
    overrides = ["privacy.user_level.enabled=true", f"privacy.user_level.noise_multiplier={sigma}",
                 f"privacy.user_level.clip_norm={update_norm}", f"privacy.user_level.target_delta={DELTA}"]
    return overrides, {"noise_multiplier": sigma, "clip_norm": update_norm, "most_rounds_joined": joined}


def run_cell(suite: str, mode: str, epsilon: float, data_dir: str, rounds: int = 0,
             extra: tuple[str, ...] = ()) -> dict[str, Any]:
    config, test_devices = base_config(suite, data_dir, rounds, extra)
    num_devices = load_federated_data(config.data, config.partition).num_devices
    settings: dict[str, Any] = {}
    if math.isfinite(epsilon):
        overrides, settings = private_overrides(config, mode, epsilon, num_devices)
        values = apply_overrides(json.loads(config.to_json()), overrides)
        config = FederatedConfig.from_dict(values).validate(num_devices=num_devices)
    started = time.perf_counter()
    result = run_plain_loop(config, test_devices=test_devices)
    return {
        "suite": suite, "overrides": list(extra),
        "mode": mode if math.isfinite(epsilon) else "none", "epsilon": epsilon, "delta": DELTA,
        "rounds": config.server.rounds, "devices_per_round": config.server.devices_per_round,
        "test_devices": test_devices or num_devices, **settings,
        "ndcg@10_full": result["test"]["full/ndcg@10"], "hr@10_sampled": result["test"]["sampled/hr@10"],
        "seconds_per_round": float(np.mean([r["seconds"] for r in result["rounds"]])),
        "declined": int(sum(r["declined"] for r in result["rounds"])),
        "wall_seconds": time.perf_counter() - started,
    }


def markdown_table(cells: list[dict[str, Any]]) -> str:
    """The results as the table in docs/benchmarks.md."""
    lines = ["| suite | overrides | mode | epsilon | sigma | C | NDCG@10 (full) | HR@10 (sampled) | s/round "
             "| declined |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for cell in cells:
        sigma, clip = cell.get("noise_multiplier"), cell.get("clip_norm")
        lines.append(
            f"| {cell['suite']} | {' '.join(cell.get('overrides', [])) or '-'} | {cell['mode']} | {cell['epsilon']} | "
            f"{'-' if sigma is None else f'{sigma:.2f}'} | {'-' if clip is None else f'{clip:.2f}'} | "
            f"{cell['ndcg@10_full']:.4f} | {cell['hr@10_sampled']:.4f} | {cell['seconds_per_round']:.2f} | "
            f"{cell['declined']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--suites", nargs="+", default=list(SUITES), choices=list(SUITES))
    parser.add_argument("--epsilons", nargs="+", type=float, default=[1.0, 3.0, 8.0, math.inf])
    parser.add_argument("--modes", nargs="+", default=["local", "user_level"], choices=["local", "user_level"])
    parser.add_argument("--table", action="store_true", help="print the results file as a markdown table and stop")
    parser.add_argument("--rounds", type=int, default=0, help="rounds for every suite (a quick check)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of every suite's config (e.g. local.optimizer=\"sgd\")")
    parser.add_argument("--output", default="runs/benchmarks/privacy-utility.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    cells = json.loads(output.read_text()) if output.exists() else []
    if args.table:
        print(markdown_table(cells))
        return 0
    done = {(c["suite"], c["mode"], c["epsilon"]) for c in cells}
    for suite in args.suites:
        for epsilon in sorted(args.epsilons, reverse=True):
            for mode in (["none"] if math.isinf(epsilon) else args.modes):
                if (suite, mode, epsilon) in done:
                    continue  # resumable: a long table survives an interruption
                cell = run_cell(suite, mode, epsilon, args.data_dir, args.rounds, tuple(args.set))
                cells.append(cell)
                output.write_text(json.dumps(cells, indent=2, default=str))
                print(f"{suite:22s} {mode:10s} eps {epsilon:>4}: NDCG@10 {cell['ndcg@10_full']:.4f}  "
                      f"sampled HR@10 {cell['hr@10_sampled']:.4f}  {cell['seconds_per_round']:.2f} s/round  "
                      f"declined {cell['declined']}", flush=True)
    print(f"results: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
