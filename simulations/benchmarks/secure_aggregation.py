"""What secure aggregation costs and whether it changes the model, measured side by side in one run.

``--part cost``: the same federated rounds through ``fedrec simulate``'s engine with and
without secure aggregation (``--private``: the config's private run, secure aggregation and
its DP, against the same run with both off) (runs alternate plain, secure, secure, plain to cancel
drift); seconds per round (round 1, with Ray starting, left out), bytes uploaded per
round and their ratios. It also times the protocol's own steps without Flower: one
device masking its vector, and the server unmasking the sum of a round.

``--part utility``: federated NeuMF on MovieLens 100K (``simulations/configs/ml-100k/neumf.toml``)
plain, with secure aggregation, and both again with distributed user-level DP noise:
final full-ranking NDCG@10 and sampled HR@10 over all 943 users.

    python -m simulations.benchmarks.secure_aggregation --data-dir ../shared/datasets --part cost \
        [--clients 50] [--rounds 6] [--set KEY=VALUE ...]
    python -m simulations.benchmarks.secure_aggregation --data-dir ../shared/datasets --part cost --private \
        --config simulations/configs/ml-100k/item_knn.toml
    python -m simulations.benchmarks.secure_aggregation --data-dir ../shared/datasets --part utility \
        [--runs plain "secure aggregation" ...] [--seeds 0 1]

Prints JSON lines and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from recsys_core.config import apply_overrides, read_toml
from recsys_core.federated.config import FederatedConfig
from recsys_core.secure_aggregation.fixed_point import FixedPointCodec
from recsys_core.secure_aggregation.keys import DeviceKeys
from recsys_core.secure_aggregation.neighbours import default_threshold, neighbour_graph, plan_degree
from recsys_core.secure_aggregation.protocol import (
    RoundSetup,
    answer_unmask,
    mask_contribution,
    unmask_requests,
    unmask_sum,
)
from server.simulate import run_federated_simulation

#: NeuMF with 72-wide embeddings: 255k shared parameters on MovieLens 100K (the issue's ~250k model).
COST_MODEL = ["model.options.gmf_dim=72", "model.options.mlp_layers=[144, 72, 36]"]
#: Distributed user-level DP for the utility part: shares sized for 40 survivors of 50.
DISTRIBUTED_DP = ["privacy.user_level.enabled=true", "privacy.user_level.noise_placement=\"distributed\"",
                  "privacy.user_level.noise_multiplier=1.0", "privacy.user_level.clip_norm=5.0",
                  "privacy.user_level.min_surviving_devices=40", "privacy.user_level.target_delta=1e-4"]


def build_config(base: dict[str, Any], overrides: list[str]) -> FederatedConfig:
    return FederatedConfig.from_dict(apply_overrides(base, overrides)).validate()


def simulate(config: FederatedConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    with tempfile.TemporaryDirectory() as output:
        directory, summary = run_federated_simulation(config, run_dir=str(Path(output) / "run"))
        return directory.read_rounds(), summary


def protocol_costs(length: int, clients: int) -> dict[str, float]:
    """Milliseconds for one device to mask a vector and for the server to unmask a round, without Flower."""
    degree = plan_degree(clients, 0.1)
    nodes = list(range(1, clients + 1))
    keys = {node: DeviceKeys.generate() for node in nodes}
    graph = neighbour_graph(nodes, degree, b"benchmark")
    threshold = default_threshold(degree)
    codec = FixedPointCodec(np.ones(length), clients)
    values = np.random.default_rng(0).uniform(-0.5, 0.5, length)
    setups = {n: RoundSetup("bench", 1, n, {m: keys[m].public_key for m in graph[n]}, threshold) for n in nodes}
    started = time.perf_counter()
    contributions = {n: mask_contribution(keys[n], setups[n], values, codec) for n in nodes}
    mask_ms = 1000 * (time.perf_counter() - started) / clients
    requests = unmask_requests(contributions, graph, 1)
    started = time.perf_counter()
    responses = {n: answer_unmask(keys[n], setups[n], requests[n]) for n in nodes}
    answer_ms = 1000 * (time.perf_counter() - started) / clients
    started = time.perf_counter()
    unmask_sum(contributions, graph, responses, threshold, codec)
    unmask_ms = 1000 * (time.perf_counter() - started)
    return {"degree": degree, "device_mask_ms": mask_ms, "device_unmask_ms": answer_ms,
            "server_unmask_ms": unmask_ms}


def cost(base: dict[str, Any], args: argparse.Namespace) -> None:
    """Plain against secure rounds; with ``--private`` the config as it is (its DP and secure aggregation)
    against the same rounds with both off, and the config's own model, devices and rounds."""
    overrides = ["server.evaluate_every=0", "server.final_evaluation=false", *args.set]
    if not args.private:
        overrides = [*COST_MODEL, f"server.devices_per_round={args.clients}", f"server.rounds={args.rounds}",
                     *overrides]
    measured: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for secure in (False, True, True, False):
        switches = [f"secure_aggregation.enabled={str(secure).lower()}"]
        if args.private and not secure:
            switches += ["privacy.user_level.enabled=false", "private=false"]
        config = build_config(base, [*overrides, *switches])
        rounds, _ = simulate(config)
        measured[secure] += rounds[1:]
        print(json.dumps({"secure": secure, "seconds": [r.seconds for r in rounds],
                          "bytes_up": [r.bytes_up for r in rounds]}), flush=True)
    length = sum(int(np.prod(shape)) for shape in _shared_shapes(config))
    row: dict[str, Any] = {"clients": config.server.devices_per_round, "parameters": length}
    for secure, rounds in measured.items():
        name = "secure" if secure else "plain"
        row[f"{name}_seconds"] = float(np.mean([r.seconds for r in rounds]))
        row[f"{name}_bytes_up_per_client"] = float(np.mean([r.bytes_up / max(r.participants, 1)
                                                            for r in rounds]))
    row["time_ratio"] = row["secure_seconds"] / row["plain_seconds"]
    row["upload_ratio"] = row["secure_bytes_up_per_client"] / row["plain_bytes_up_per_client"]
    row.update(protocol_costs(length, config.server.devices_per_round))
    print(json.dumps(row), flush=True)
    print("| clients/round | parameters | plain s/round | secure s/round | ratio | upload per client plain / "
          "secure (KB) | upload ratio | degree | device mask ms | server unmask ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {row['clients']} | {length:,} | {row['plain_seconds']:.2f} | {row['secure_seconds']:.2f} | "
          f"{row['time_ratio']:.2f} | {row['plain_bytes_up_per_client'] / 1e3:.0f} / "
          f"{row['secure_bytes_up_per_client'] / 1e3:.0f} | {row['upload_ratio']:.3f} | {row['degree']} | "
          f"{row['device_mask_ms']:.1f} | {row['server_unmask_ms']:.0f} |")


def _shared_shapes(config: FederatedConfig) -> list[tuple[int, ...]]:
    from recsys_core.federated.data import load_federated_data
    from recsys_core.federated.device_model import build_device_model
    from recsys_core.federated.state import state_to_arrays

    data = load_federated_data(config.data, config.partition)
    model = build_device_model(config, data.catalog, 1, 0)
    return [value.shape for value in state_to_arrays(model.shared_state()).values()]


UTILITY_RUNS = {
    "plain": [],
    "secure aggregation": ["secure_aggregation.enabled=true"],
    "distributed DP": DISTRIBUTED_DP,
    "secure aggregation + distributed DP": ["secure_aggregation.enabled=true", *DISTRIBUTED_DP],
}


def utility(base: dict[str, Any], args: argparse.Namespace) -> None:
    rows = []
    for seed in args.seeds:
        for name in args.runs:
            rounds, summary = simulate(build_config(base, [*UTILITY_RUNS[name], f"seed={seed}", *args.set]))
            privacy = summary.get("privacy", {}).get("user_level", {})
            row = {"run": name, "seed": seed, "ndcg@10": summary["test"]["full/ndcg@10"],
                   "hr@10": summary["test"]["sampled/hr@10"],
                   "seconds_per_round": float(np.mean([r.seconds for r in rounds])),
                   "failed_rounds": sum(r.status == "failed" for r in rounds),
                   "clipped_coordinates": sum(r.clipped_coordinates or 0 for r in rounds),
                   "epsilon": privacy.get("claimed_epsilon"), "delta": privacy.get("delta")}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("| run | seed | full NDCG@10 | sampled HR@10 | s/round | failed rounds | user-level epsilon (claimed) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        epsilon = "-" if row["epsilon"] is None else f"{row['epsilon']:.1f} at delta {row['delta']:g}"
        print(f"| {row['run']} | {row['seed']} | {row['ndcg@10']:.4f} | {row['hr@10']:.4f} | "
              f"{row['seconds_per_round']:.2f} | {row['failed_rounds']} | {epsilon} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="simulations/configs/ml-100k/neumf.toml")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--part", choices=["cost", "utility"], required=True)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--runs", nargs="+", choices=list(UTILITY_RUNS), default=list(UTILITY_RUNS),
                        help="utility part: which runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="utility part: run seeds")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--private", action="store_true",
                        help="cost part: 'secure' is the config's private run (secure aggregation and its DP), "
                             "'plain' the same with both off; the config's own model, devices and rounds")
    args = parser.parse_args()
    base = apply_overrides(read_toml(args.config), [f'data.data_dir="{args.data_dir}"'])
    cost(base, args) if args.part == "cost" else utility(base, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
