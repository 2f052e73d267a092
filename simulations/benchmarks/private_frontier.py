"""The privacy-utility frontier of private item k-NN and private popularity, user-level DP, on every test user.

    python -m simulations.benchmarks.private_frontier --data-dir ../shared/datasets \\
        [--datasets ml-100k amazon-beauty amazon-sports] [--epsilons 1 3 8 inf] [--draws 3] \\
        [--output runs/benchmarks/private-frontier.json] [--plot docs/private-frontier.png] \\
        [--set neighbourhood_items=1000] [--skip-floor]

For each dataset and epsilon it releases what a federated run of the main job releases
(``recsys_core/federated/main_job.py``: every device in every round, distributed noise,
secure aggregation) and tests it on every test user against Popularity, with paired
standard errors:

* **item k-NN**: the releases of :class:`~recsys_core.models.item_knn.ItemKNN` (item
  counts, then ``pair_releases`` times the co-occurrences among the most counted items),
  each a sum of unit-norm user statistics plus Gaussian noise. The noise multiplier
  spends epsilon at delta over all its rounds (RDP, no sampling assumed); the noise on each sum has variance
  ``sigma^2 / 0.95``, what the shares of all devices add up to when they are sized for 95%
  survivors (more noise than the accountant needs, never less).
* **private popularity**: one release of the unit-norm item counts with the whole budget
  (one round), ranked by the noisy counts: the private floor.

The sums are formed centrally and the noise added once, which gives the federated
output's distribution exactly (the federation is a sum, ``tests/recsys_core/models/test_item_knn.py``);
one real run through Flower with secure aggregation checks it (docs/benchmarks.md). Noise
here is seeded (``--seed``) so the table reproduces; a real run's comes from OS entropy.
delta is the largest power of ten at most 1 / (10 users).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys_core.data.config import DataConfig
from recsys_core.data.loading import load_interactions
from recsys_core.data.sampling import SeenItems
from recsys_core.data.splits import DatasetSplit, split_log
from recsys_core.evaluation import paired_difference
from recsys_core.federated.main_job import SURVIVING_FRACTION
from recsys_core.metrics import EvaluationConfig
from recsys_core.models import CatalogInfo, Recommender, build_model
from recsys_core.models.base import config_from_dict
from recsys_core.models.item_knn import ItemKNNConfig
from recsys_core.privacy.accountant import noise_multiplier_for_budget
from recsys_core.training import evaluate_model

METRIC = "full/ndcg@10"


def frontier_delta(users: int) -> float:
    """The largest power of ten at most 1 / (10 users)."""
    return 10.0 ** math.floor(math.log10(1.0 / (10 * users)))


def per_user_ndcg(model: Recommender, split: DatasetSplit, seen: SeenItems) -> np.ndarray:
    """Each test user's NDCG@10, in user order."""
    per_user: dict[int, dict[str, float]] = {}
    evaluate_model(model, split, "test", seen, EvaluationConfig(), per_user)
    return np.array([per_user[user][METRIC] for user in sorted(per_user)])


def noisy(tensor: torch.Tensor, std: float, generator: np.random.Generator) -> torch.Tensor:
    return tensor + torch.from_numpy(generator.normal(0.0, std, tensor.shape).astype(np.float32))


def private_item_knn(split: DatasetSplit, sigma: float, generator: np.random.Generator,
                     options: dict[str, Any]) -> Recommender:
    """Item k-NN's releases, each with noise of std sigma / sqrt(0.95) (zero: the exact sums)."""
    model = build_model("item_knn", CatalogInfo.from_log(split.train), options)
    std = sigma / math.sqrt(SURVIVING_FRACTION)
    for statistics_round in range(1, model.statistics_rounds + 1):
        model.fit_statistics_round(split.train, statistics_round)
        for name in model.released_arrays(statistics_round) or ():
            released = getattr(model, name)
            released.copy_(noisy(released, std, generator))
    return model


def private_popularity(split: DatasetSplit, sigma: float, generator: np.random.Generator,
                       options: dict[str, Any]) -> Recommender:
    """Popularity ranked by the unit-norm item counts of one release with noise std sigma / sqrt(0.95)."""
    knn = build_model("item_knn", CatalogInfo.from_log(split.train))
    knn.fit_statistics_round(split.train, 1)
    model = build_model("popularity", CatalogInfo.from_log(split.train))
    model.item_counts.copy_(noisy(knn.item_counts, sigma / math.sqrt(SURVIVING_FRACTION), generator))
    return model


def measure(dataset: str, data_dir: str | None, epsilons: list[float], draws: int, seed: int,
            options: dict[str, Any] | None = None, skip_floor: bool = False) -> list[dict[str, Any]]:
    """Every cell of one dataset; ``options`` are item k-NN's model options (its defaults otherwise)."""
    started = time.perf_counter()
    data = DataConfig(dataset=dataset, data_dir=data_dir)
    split = split_log(load_interactions(data), data.split)
    seen = SeenItems.from_logs(split.train, split.valid, split.test)
    users = split.train.n_users
    delta = frontier_delta(users)
    popularity = build_model("popularity", CatalogInfo.from_log(split.train))
    popularity.fit_statistics(split.train)
    baseline = per_user_ndcg(popularity, split, seen)
    print(f"{dataset}: {users} users, delta {delta:g}, Popularity {baseline.mean():.4f} "
          f"({time.perf_counter() - started:.0f} s)", flush=True)
    generator = np.random.default_rng(seed)
    rows = []
    for epsilon in epsilons:
        private = math.isfinite(epsilon)
        floors: list[np.ndarray] = []
        knn_rounds = config_from_dict(ItemKNNConfig, options or {}).statistics_rounds
        for name, rounds, build in (("private popularity", 1, private_popularity),
                                    ("item_knn", knn_rounds, private_item_knn)):
            if name == "private popularity" and (skip_floor or not private):
                continue
            sigma = noise_multiplier_for_budget(target_epsilon=epsilon, delta=delta, sampling_rate=1.0,
                                                steps=rounds) if private else 0.0
            for draw in range(draws if private else 1):
                values = per_user_ndcg(build(split, sigma, generator, options or {}), split, seen)
                difference = paired_difference(values, baseline)
                if name == "private popularity":
                    floors.append(values)
                # Each item k-NN draw is paired with a private-popularity draw on the same users.
                floor = paired_difference(values, floors[draw]) if floors and name == "item_knn" else None
                label = name
                if name == "item_knn" and options:
                    label += " (" + ", ".join(f"{key} {value}" for key, value in sorted(options.items())) + ")"
                rows.append({"dataset": dataset, "users": users, "model": label, "options": options or {},
                             "epsilon": epsilon, "delta": delta,
                             "noise_multiplier": sigma, "rounds": rounds, "draw": draw, "ndcg@10": float(values.mean()),
                             "popularity": float(baseline.mean()), "ratio": float(values.mean() / baseline.mean()),
                             "paired_se": difference.paired_standard_error, "z": difference.z,
                             "z_vs_private_popularity": None if floor is None else floor.z})
                print(f"  {name:18} eps {epsilon:>4} draw {draw}: {values.mean():.4f} "
                      f"({values.mean() / baseline.mean():.2f}x Popularity, z {difference.z:+.1f}) "
                      f"{time.perf_counter() - started:.0f} s", flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per dataset, model and epsilon; the mean over draws and the range."""
    lines = ["| dataset | model | epsilon | delta | sigma | NDCG@10 (mean of draws) | range | x Popularity | "
             "paired z vs Popularity | paired z vs private popularity |",
             "|---|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    keys = sorted({(row["dataset"], row["model"], row["epsilon"]) for row in rows},
                  key=lambda key: (key[0], key[1], -key[2]))
    for dataset, model, epsilon in keys:
        cell = [row for row in rows if (row["dataset"], row["model"], row["epsilon"]) == (dataset, model, epsilon)]
        values = [row["ndcg@10"] for row in cell]
        mean = float(np.mean(values))
        span = f"{min(values):.4f}-{max(values):.4f}" if len(values) > 1 else ""
        zs = ", ".join(f"{row['z']:+.1f}" for row in cell)
        floor_zs = ", ".join(f"{row['z_vs_private_popularity']:+.1f}" for row in cell
                             if row.get("z_vs_private_popularity") is not None)
        lines.append(f"| {dataset} ({cell[0]['users']:,} users) | {model} | {epsilon:g} | {cell[0]['delta']:g} | "
                     f"{cell[0]['noise_multiplier']:.3f} | {mean:.4f} | {span} | {mean / cell[0]['popularity']:.2f} | "
                     f"{zs} | {floor_zs} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    datasets = sorted({row["dataset"] for row in rows})
    figure, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.8), squeeze=False)
    for axis, dataset in zip(axes[0], datasets):
        finite = sorted({row["epsilon"] for row in rows if row["dataset"] == dataset and math.isfinite(row["epsilon"])})
        for model, marker in (("item_knn", "o"), ("private popularity", "s")):
            # An item k-NN label names its options: "item_knn (window 3, ...)".
            means = [np.mean([row["ndcg@10"] for row in rows if row["dataset"] == dataset
                              and row["model"].split(" (")[0] == model and row["epsilon"] == epsilon] or [np.nan])
                     for epsilon in finite]
            axis.plot(finite, means, marker=marker, label=f"{model} (user-level DP)")
        exact = [row["ndcg@10"] for row in rows if row["dataset"] == dataset and not math.isfinite(row["epsilon"])]
        if exact:
            axis.axhline(exact[0], color="tab:green", linestyle="--", label="item_knn, not private")
        axis.axhline(next(row["popularity"] for row in rows if row["dataset"] == dataset), color="grey",
                     linestyle=":", label="Popularity (not private)")
        axis.set(xscale="log", title=dataset, xlabel="epsilon (user-level)", ylabel="test NDCG@10 (all users)")
        axis.set_xticks(finite, [f"{epsilon:g}" for epsilon in finite])
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0][0].legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--datasets", nargs="+", default=["ml-100k", "amazon-beauty", "amazon-sports"])
    parser.add_argument("--epsilons", nargs="+", type=float, default=[1.0, 3.0, 8.0, math.inf])
    parser.add_argument("--draws", type=int, default=3, help="noise draws per private cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                        help="an item k-NN model option, e.g. neighbourhood_items=1000 (default: the model's)")
    parser.add_argument("--skip-floor", action="store_true", help="measure item k-NN only (no private popularity)")
    parser.add_argument("--output", type=Path, default=Path("runs/benchmarks/private-frontier.json"))
    parser.add_argument("--plot", type=Path, help="PNG of NDCG@10 against epsilon")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for dataset in args.datasets:
        options = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.set)}
        rows += measure(dataset, args.data_dir, args.epsilons, args.draws, args.seed, options, args.skip_floor)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    print(table(rows))
    if args.plot:
        plot(rows, args.plot)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
