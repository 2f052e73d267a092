"""Paired comparison of runs tested on the same devices (``plain_loop --per-device-output``).

    python -m simulations.benchmarks.paired_comparison runs/popularity.json runs/caser.json runs/sasrec.json

The first file is the baseline; each other run is compared with it on the devices both
tested, per device (a device's metric sum over its users, divided by its users), for
each ``--metric``. Prints a table of the mean difference, its paired standard error and
z; ``--output`` also writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from recsys_core.evaluation import paired_difference


def per_device_values(path: Path, metric: str) -> dict[str, float]:
    """Each device's mean ``metric`` from a ``--per-device-output`` file."""
    devices = json.loads(path.read_text(encoding="utf-8"))
    try:
        return {device: sums[metric] / sums["users"] for device, sums in devices.items() if sums["users"]}
    except KeyError as missing:
        raise SystemExit(f"{path}: a device has no {missing} entry; known metrics: "
                         f"{', '.join(sorted(next(iter(devices.values()))))}") from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("baseline", type=Path)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--metric", action="append", help="default: full/ndcg@10 and sampled/hr@10")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    rows = []
    print("| run | metric | devices | run | baseline | difference | paired SE | z | unpaired SE |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for metric in args.metric or ["full/ndcg@10", "sampled/hr@10"]:
        baseline = per_device_values(args.baseline, metric)
        for run in args.runs:
            values = per_device_values(run, metric)
            common = sorted(set(values) & set(baseline), key=int)
            result = paired_difference(np.array([values[d] for d in common]), np.array([baseline[d] for d in common]))
            rows.append({"run": str(run), "baseline": str(args.baseline), "metric": metric, **vars(result),
                         "z": result.z})
            print(f"| {run.stem} | {metric} | {result.units} | {result.mean_a:.4f} | {result.mean_b:.4f} | "
                  f"{result.mean_difference:+.4f} | {result.paired_standard_error:.4f} | {result.z:+.2f} | "
                  f"{result.unpaired_standard_error:.4f} |")
    if args.output:
        args.output.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
