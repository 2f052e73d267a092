"""Privacy audits of five federated runs: the numbers in docs/privacy-audit.md.

Each cell runs ``fedrec simulate`` (in process) with ``--audit-canaries M`` and then
``fedrec audit`` on its run directory:

* ``non-private``: the positive control;
* ``null-control``: non-private, coins flipped and recorded, no canary inserted;
* ``local-dp-8``: interaction-level DP-SGD on every device, budget epsilon 8;
* ``user-dp-8-central``: user-level DP-FedAvg, epsilon 8 (unamplified), noise added by the server;
* ``user-dp-8-secure``: user-level DP-FedAvg, epsilon 8, noise shares added by the devices, secure aggregation.

The noise multipliers for epsilon 8 come from the same calibration as the utility
benchmark (``simulations.benchmarks.privacy_utility.private_overrides``).

    python -m simulations.benchmarks.privacy_audit --data-dir ../shared/datasets \\
        [--cells non-private local-dp-8 ...] [--rounds 30] [--canaries 500] \\
        [--output runs/benchmarks/privacy-audit.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from recsys_core.config import apply_overrides
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.data import load_federated_data
from server.audit import AuditOptions, audit_run
from server.simulate import run_federated_simulation
from simulations.benchmarks.privacy_utility import base_config, private_overrides

EPSILON = 8.0
CELLS = ("non-private", "null-control", "local-dp-8", "user-dp-8-central", "user-dp-8-secure")


def cell_config(cell: str, data_dir: str, rounds: int, canaries: int, output_dir: str) -> FederatedConfig:
    config, _ = base_config("ml-100k-neumf", data_dir, rounds, ("server.final_evaluation=false",
                                                                f"data.canaries.count={canaries}",
                                                                f'output_dir="{output_dir}"'))
    num_devices = load_federated_data(config.data, config.partition).num_devices
    overrides: list[str] = []
    if cell == "null-control":
        overrides = ["data.canaries.insert=false"]
    elif cell == "local-dp-8":
        overrides, _ = private_overrides(config, "local", EPSILON, num_devices)
    elif cell.startswith("user-dp-8"):
        overrides, _ = private_overrides(config, "user_level", EPSILON, num_devices)
        if cell.endswith("secure"):
            survivors = config.server.devices_per_round - 5
            overrides += ["secure_aggregation.enabled=true", 'privacy.user_level.noise_placement="distributed"',
                          f"privacy.user_level.min_surviving_devices={survivors}"]
    values = apply_overrides(json.loads(config.to_json()), overrides)
    return FederatedConfig.from_dict(values).validate(num_devices=num_devices)


def run_cell(cell: str, data_dir: str, rounds: int, canaries: int, output_dir: str) -> dict[str, Any]:
    config = cell_config(cell, data_dir, rounds, canaries, output_dir)
    started = time.perf_counter()
    directory, summary = run_federated_simulation(config)
    simulated = time.perf_counter() - started
    result = audit_run(directory.path, AuditOptions(expected_head=summary["record_chain_head"]))
    row: dict[str, Any] = {"cell": cell, "run_directory": str(directory.path), "rounds": rounds,
                           "simulate_seconds": simulated, "audit_seconds": time.perf_counter() - started - simulated,
                           "verdict": result["verdict"]["result"], "reasons": result["verdict"]["reasons"],
                           "formal_checks": len(result["formal"]["checks"]),
                           "formal_failed": sum(not check["passed"] for check in result["formal"]["checks"])}
    for view in ("released_model", "server_view"):
        audit = result["canaries"][view]
        row[view] = {key: audit[key] for key in ("epsilon_lower_bound", "claimed_epsilon", "claim", "correct",
                                                 "guesses", "delta")}
        row[view]["auc"] = audit["membership"]["calibrated"]["auc"]
    row["loss_threshold"] = result["canaries"]["released_model"]["membership"]["loss_threshold"]
    row["item_set"] = {view: result["item_set"][view] for view in ("raw", "aggregate")}
    row["item_set"]["server_view"] = result["item_set"]["server_view"]
    return row


def markdown_tables(rows: list[dict[str, Any]]) -> str:
    def claimed(value: float) -> str:
        return "none" if math.isinf(value) else f"{value:.3g}"

    lines = ["| run | verdict | formal checks | canary bound, released model (claimed) | AUC | canary bound, "
             "server view (claimed) | AUC | item-set precision, raw / aggregate (chance) |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        released, server, item_set = row["released_model"], row["server_view"], row["item_set"]
        lines.append(
            f"| {row['cell']} | {row['verdict']} | {row['formal_checks'] - row['formal_failed']} of "
            f"{row['formal_checks']} | {released['epsilon_lower_bound']:.2f} ({claimed(released['claimed_epsilon'])})"
            f" | {released['auc']:.3f} | {server['epsilon_lower_bound']:.2f} ({claimed(server['claimed_epsilon'])}) "
            f"| {server['auc']:.3f} | {item_set['raw']['top_k_precision']:.3f} / "
            f"{item_set['aggregate']['top_k_precision']:.3f} ({item_set['raw']['chance_precision']:.3f}) |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--canaries", type=int, default=500)
    parser.add_argument("--output", default="runs/benchmarks/privacy-audit.json")
    parser.add_argument("--table", action="store_true", help="print the results file as Markdown and stop")
    args = parser.parse_args()
    output = Path(args.output)
    rows = json.loads(output.read_text()) if output.exists() else []
    if not args.table:
        for cell in args.cells:
            rows = [row for row in rows if row["cell"] != cell]
            rows.append(run_cell(cell, args.data_dir, args.rounds, args.canaries, str(output.parent / "runs")))
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(json.dumps(rows, indent=2))
            print(json.dumps(rows[-1]), flush=True)
    print(markdown_tables(sorted(rows, key=lambda row: CELLS.index(row["cell"]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
