"""What local DP-SGD costs a device: a DP client update against the same non-DP update, side by side.

For each model, the same sampled clients run ``train_on_device`` once without and
once with ``privacy.local`` (interleaved, so machine noise hits both alike), after
a warm-up round of every client (steady state: what a device pays from its second round on).
A third variant times the device side of user-level DP-FedAvg (train, then clip the update). The DP update
includes everything a DP device does per round: the budget check, Poisson batches,
clipping, noise and the epsilon it reports. Target (issue 4): DP <= 3x non-DP.

    python -m simulations.benchmarks.dp_overhead --data-dir ../shared/datasets \
        [--clients 30] [--repeats 3] [--models neumf sasrec ...] [--output runs/benchmarks]

By default every gradient-trained model of the zoo is measured (Popularity has no
training step). Besides the ratio of whole updates, each row has the ratio of one
local optimiser step: a DP update may take a different number of steps than the plain
one over the same data (NeuMF's DP sample groups an interaction with its negatives,
so a DP epoch has fewer, larger steps), so the update time is divided by the update's
step count on each side (plain: batches of ``training_samples``; DP: the Poisson
schedule's steps over ``private_training_samples``). With ``--output`` the numbers
also go to ``<output>/dp-overhead-<UTC time>.json``.

Without ``--data-dir`` (or when MovieLens 100K is not there) it uses a synthetic log of
MovieLens 100K's size (943 users, 1682 items, ~100k interactions).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from recsys_core.data.splits import DatasetSplit
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.data import load_federated_data
from recsys_core.federated.device import train_on_device
from recsys_core.federated.device_model import build_device_model
from recsys_core.federated.state import state_to_arrays
from recsys_core.models import MODELS, CatalogInfo
from recsys_core.run_records import environment_record

# Each model's defaults unless listed (the papers' settings; see each model's config class).
OPTIONS = {
    "neumf": {"gmf_dim": 32, "mlp_layers": [64, 32, 16]},
    "sasrec": {"hidden_dim": 64, "max_length": 50},
    "gru4rec": {"embedding_dim": 64, "hidden_dim": 100, "max_length": 50},
}
GRADIENT_MODELS = [name for name, model in MODELS.items() if model.trains_with_gradients]
ML100K_FOLDER = "movielens-100k"


def data_section(data_dir: str | None) -> dict:
    if data_dir is not None and (Path(data_dir) / ML100K_FOLDER).is_dir():
        return {"dataset": "ml-100k", "data_dir": data_dir}
    return {"dataset": "synthetic",
            "synthetic": {"n_users": 943, "n_items": 1682, "mean_interactions_per_user": 106, "seed": 0}}


def configs(model: str, data: dict, epochs: int,
            batch_size: int) -> tuple[FederatedConfig, FederatedConfig, FederatedConfig]:
    values = {"data": data, "model": {"name": model, "options": OPTIONS.get(model, {})},
              "local": {"epochs": epochs, "batch_size": batch_size}}
    # A budget that never declines, but finite, so the per-round budget check is timed too.
    private = {**values, "privacy": {"local": {"enabled": True, "noise_multiplier": 1.0, "per_sample_clip_norm": 1.0,
                                               "target_epsilon": 1e9, "target_delta": 1e-5}}}
    # User-level DP-FedAvg: the device clips its update (central noise: the server adds it, once per round).
    user_level = {**values, "privacy": {"user_level": {"enabled": True, "clip_norm": 0.5, "target_delta": 1e-5}}}
    return (FederatedConfig.from_dict(values).validate(), FederatedConfig.from_dict(private).validate(),
            FederatedConfig.from_dict(user_level).validate())


def steps_per_update(config: FederatedConfig, split: DatasetSplit, partition: int) -> tuple[int, int]:
    """Optimiser steps of one update on this device: ``(plain, local DP)``."""
    model = build_device_model(config, CatalogInfo.from_log(split.train), split.train.n_users, partition)
    generator = np.random.default_rng(0)
    plain = len(next(iter(model.training_samples(split.train, generator).values())))
    private = len(next(iter(model.private_training_samples(split.train, generator).values())))
    batch, epochs = config.local.batch_size, config.local.epochs
    # DP: Opacus-style Poisson batches, as many per epoch as a plain epoch of the DP samples has batches.
    return epochs * math.ceil(plain / batch), epochs * math.ceil(private / batch)


def measure(model: str, data: dict, clients: int, repeats: int, epochs: int, batch_size: int) -> dict[str, float]:
    plain, private, user_level = configs(model, data, epochs, batch_size)
    federated = load_federated_data(plain.data, plain.partition)
    shared = state_to_arrays(build_device_model(plain, federated.catalog, 1, 0).shared_state())
    partitions = np.random.default_rng(0).choice(federated.num_devices, size=clients, replace=False)
    splits = {int(p): federated.device_split(int(p)) for p in partitions}
    # Warm-up, one round of every client: imports, the cached Opacus wrappers, and the
    # accountant's RDP curve of each client's sampling rate (computed once per rate and
    # process, ~0.1 s; a device pays it in its first round only). Timed separately.
    started = time.perf_counter()
    for partition, split in splits.items():
        train_on_device(private, split, shared, None, 1, partition)
    first_round_ms = 1000 * (time.perf_counter() - started) / clients
    for partition, split in splits.items():
        train_on_device(plain, split, shared, None, 1, partition)
    seconds = {"plain": 0.0, "dp": 0.0, "user_level": 0.0}
    for repeat in range(repeats):
        for partition, split in splits.items():
            for label, config in (("plain", plain), ("dp", private), ("user_level", user_level)):
                started = time.perf_counter()
                train_on_device(config, split, shared, None, 2 + repeat, partition)
                seconds[label] += time.perf_counter() - started
    calls = repeats * clients
    interactions = np.mean([split.train.n_interactions for split in splits.values()])
    steps = np.array([steps_per_update(plain, split, partition) for partition, split in splits.items()])
    plain_steps, dp_steps = (repeats * int(steps[:, column].sum()) for column in (0, 1))
    return {"plain_ms": 1000 * seconds["plain"] / calls, "dp_ms": 1000 * seconds["dp"] / calls,
            "ratio": seconds["dp"] / seconds["plain"], "user_level_ms": 1000 * seconds["user_level"] / calls,
            "user_level_ratio": seconds["user_level"] / seconds["plain"], "mean_interactions": float(interactions),
            "first_round_dp_ms": first_round_ms,
            "plain_steps_per_update": plain_steps / calls, "dp_steps_per_update": dp_steps / calls,
            "plain_step_ms": 1000 * seconds["plain"] / max(plain_steps, 1),
            "dp_step_ms": 1000 * seconds["dp"] / max(dp_steps, 1),
            "step_ratio": (seconds["dp"] / max(dp_steps, 1)) / (seconds["plain"] / max(plain_steps, 1))}


def markdown_table(results: dict[str, dict[str, float]]) -> str:
    lines = ["| model | non-DP ms/update | local DP ms/update | update ratio | steps/update (non-DP / DP) "
             "| non-DP ms/step | DP ms/step | step ratio | user-level DP ms/update | ratio |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model, row in results.items():
        lines.append(f"| {model} | {row['plain_ms']:.1f} | {row['dp_ms']:.1f} | **{row['ratio']:.2f}** "
                     f"| {row['plain_steps_per_update']:.1f} / {row['dp_steps_per_update']:.1f} "
                     f"| {row['plain_step_ms']:.2f} | {row['dp_step_ms']:.2f} | **{row['step_ratio']:.2f}** "
                     f"| {row['user_level_ms']:.1f} | {row['user_level_ratio']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--models", nargs="+", default=GRADIENT_MODELS, choices=GRADIENT_MODELS)
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", default=None, help="folder for a JSON copy of the results (e.g. runs/benchmarks)")
    arguments = parser.parse_args()
    torch.set_num_threads(1)  # one simulated client per core, as in the simulations
    data = data_section(arguments.data_dir)
    print(f"data: {data['dataset']}; {arguments.clients} clients x {arguments.repeats} repeats, "
          f"{arguments.epochs} local epochs, batch {arguments.batch_size}, 1 torch thread")
    results = {}
    for model in arguments.models:
        result = measure(model, data, arguments.clients, arguments.repeats, arguments.epochs, arguments.batch_size)
        results[model] = result
        print(f"{model:8s} plain {result['plain_ms']:8.1f} ms/client   dp {result['dp_ms']:8.1f} ms/client   "
              f"ratio {result['ratio']:.2f}x   step ratio {result['step_ratio']:.2f}x   "
              f"user-level {result['user_level_ms']:8.1f} ms/client "
              f"ratio {result['user_level_ratio']:.2f}x   "
              f"(mean {result['mean_interactions']:.0f} train interactions/client; "
              f"first DP round incl. warm-up {result['first_round_dp_ms']:.0f} ms/client)", flush=True)
    print(markdown_table(results))
    if arguments.output is not None:
        output = Path(arguments.output)
        output.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        report = {"machine": platform.processor() or platform.machine(), "threads": 1, "data": data["dataset"],
                  "clients": arguments.clients, "repeats": arguments.repeats, "epochs": arguments.epochs,
                  "batch_size": arguments.batch_size, "options": {m: OPTIONS.get(m, {}) for m in results},
                  "environment": environment_record(), "results": results}
        path = output / f"dp-overhead-{stamp}.json"
        path.write_text(json.dumps(report, indent=2))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
