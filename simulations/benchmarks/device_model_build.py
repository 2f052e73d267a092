"""What a device update costs with the model copied from a template against built afresh.

A device whose model has no private parameters gets every weight from the server, so
``fresh_device_model`` copies a per-process template instead of drawing initial weights
that loading overwrites. This times ``train_on_device`` both ways, side by side on the
same devices, and checks that both give the same shared parameters.

    python -m simulations.benchmarks.device_model_build --config simulations/configs/amazon-beauty/mult_dae.toml \
        --data-dir ../shared/datasets --devices 30
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from unittest import mock

import numpy as np
import torch

from recsys_core.config import apply_overrides, read_toml
from recsys_core.federated import device
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.data import FederatedData, load_federated_data
from recsys_core.federated.device_model import build_device_model
from recsys_core.federated.state import Arrays, state_to_arrays


def time_updates(config: FederatedConfig, data: FederatedData, shared: Arrays,
                 partitions: list[int]) -> tuple[float, list[Arrays]]:
    """Mean seconds per device update over ``partitions``, and the shared parameters each sent."""
    started = time.perf_counter()
    outcomes = [device.train_on_device(config, data.device_split(p), shared, None, 1, p) for p in partitions]
    return (time.perf_counter() - started) / len(partitions), [outcome.shared_parameters for outcome in outcomes]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--data-dir")
    parser.add_argument("--devices", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = [f'data.data_dir="{args.data_dir}"'] if args.data_dir else []
    config = FederatedConfig.from_dict(apply_overrides(read_toml(args.config), overrides)).validate()
    data = load_federated_data(config.data, config.partition)
    shared = state_to_arrays(build_device_model(config, data.catalog, 1, 0).shared_state())
    partitions = list(range(min(args.devices, data.num_devices)))
    seconds: dict[str, list[float]] = {"template": [], "built": []}
    identical = True
    for _ in range(args.repeats):
        # Alternate so that both see the same machine load; the first template pass pays for the template.
        template_seconds, template_sent = time_updates(config, data, shared, partitions)
        with mock.patch.object(device, "fresh_device_model", build_device_model):
            built_seconds, built_sent = time_updates(config, data, shared, partitions)
        seconds["template"].append(template_seconds)
        seconds["built"].append(built_seconds)
        identical = identical and all(np.array_equal(a[name], b[name])
                                      for a, b in zip(template_sent, built_sent) for name in a)
    print("per repeat, s/device:", json.dumps(seconds))
    template_ms, built_ms = 1000 * min(seconds["template"]), 1000 * min(seconds["built"])
    print("| model | devices | built ms/device | template ms/device | ratio | same updates |")
    print("|---|---:|---:|---:|---:|---|")
    print(f"| {config.model.name} | {len(partitions)} | {built_ms:.0f} | {template_ms:.0f} | "
          f"{built_ms / template_ms:.1f}x | {identical} |")
    print(json.dumps({"model": config.model.name, "built_ms": built_ms, "template_ms": template_ms,
                      "identical_updates": identical}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
