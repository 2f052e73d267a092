"""Model zoo benchmarks: every model's centralized results side by side, and cold start on MovieLens 100K.

Usage (from the repository root):

    # Cold start: withhold every interaction of 10% of the items (seeded), train the
    # hybrid (and, for comparison, the content model), and rank the withheld items.
    python -m simulations.benchmarks.model_zoo cold-start --data-dir ../shared/datasets \
        [--models hybrid content] [--seeds 0 1 2] [--fraction 0.1] [--output runs/benchmarks]

    # One Markdown table from one or more JSON files written by centralized_baselines.
    python -m simulations.benchmarks.model_zoo table runs/benchmarks/centralized-*.json

The centralized runs themselves are ``simulations.benchmarks.centralized_baselines``
with the configs in ``simulations/configs/<dataset>/centralized/`` (one per model and dataset).

Cold-start protocol. The usual chronological leave-one-out split of ML-100K is
made first; then a seeded 10% of the catalogue becomes *cold*: every interaction
with a cold item (train, validation and test) is removed, and the cold items are
dropped from the catalogue the model is trained on (renumbered away, so they are
not even sampled as negatives), as for items added after training. The model is
trained on the warm items with the config's early stopping (validation full
NDCG@10 over the warm items), then its weights are loaded into a model sized for
the whole catalogue: item-indexed rows go to the warm items and the cold items keep
their initial (never trained) rows, so a cold item's score comes from its features
only. Each user is represented by their warm training history (the profile tower
reads it).

* ``cold AUC`` (the headline number): for each user with at least one withheld
  interaction, the probability that a cold item the user interacted with (anywhere
  in the withheld interactions) scores higher than a cold item the user never
  interacted with; averaged over users. 0.5 is chance, and it is what a model
  without content (NeuMF, or the hybrid's embeddings alone) gets, since all cold
  items then share the same untrained representation up to initial noise.
* ``cold vs all-unseen AUC``: the same positives against every item the user never
  interacted with, warm or cold (a harder and less fair test: warm items have
  learned embeddings and biases, cold ones do not).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys_core.config import apply_overrides, read_toml
from recsys_core.data.interactions import InteractionLog
from recsys_core.data.loading import load_interactions
from recsys_core.data.sampling import SeenItems
from recsys_core.data.splits import DatasetSplit, split_log
from recsys_core.experiment import ExperimentConfig
from recsys_core.models import CatalogInfo, Recommender, build_model
from recsys_core.run_records import environment_record
from recsys_core.training import seeded, train_model

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPOSITORY_ROOT / "simulations" / "configs" / "ml-100k" / "centralized"


# -- cold start ---------------------------------------------------------------------------------
def renumbered(log: InteractionLog, warm: np.ndarray) -> InteractionLog:
    """The rows of ``log`` on ``warm`` items, with items renumbered 0..len(warm)-1 (features kept for them)."""
    new_ids = np.full(log.n_items, -1, dtype=np.int64)
    new_ids[warm] = np.arange(len(warm))
    keep = new_ids[log.item_ids] >= 0
    return InteractionLog.from_arrays(
        log.user_ids[keep], new_ids[log.item_ids[keep]], log.timestamps[keep],
        None if log.ratings is None else log.ratings[keep], log.user_map, log.item_map.subset(warm), log.name,
        None if log.item_features is None else log.item_features.subset(warm),
    )


def warm_split(split: DatasetSplit, warm: np.ndarray) -> DatasetSplit:
    """The split without any interaction of a cold item, over the warm catalogue only."""
    return DatasetSplit(renumbered(split.train, warm), renumbered(split.valid, warm), renumbered(split.test, warm))


def grow_catalogue(trained: Recommender, full: Recommender, warm: np.ndarray) -> None:
    """Loads ``trained`` (sized for the warm items) into ``full`` (sized for all items).

    Tensors of equal shape are copied; item-indexed tensors (first dimension the
    number of items) get the warm rows, and the cold rows keep ``full``'s initial values.
    """
    state = full.state_dict()
    for key, value in trained.state_dict().items():
        if value.shape == state[key].shape:
            state[key] = value
        elif value.shape[1:] == state[key].shape[1:] and len(value) == len(warm):
            state[key][warm] = value
        else:
            raise ValueError(f"cannot map {key}: {tuple(value.shape)} -> {tuple(state[key].shape)}")
    full.load_state_dict(state)


def cold_aucs(scores: np.ndarray, users: np.ndarray, cold: np.ndarray, withheld: SeenItems,
              seen: SeenItems) -> dict[str, float]:
    """Mean per-user AUCs of ``[len(users), n_items]`` scores (see the module docstring)."""
    n_items = scores.shape[1]
    cold_mask = np.zeros(n_items, dtype=bool)
    cold_mask[cold] = True
    cold_aucs_, all_aucs = [], []
    for row, user in enumerate(users):
        positive = withheld.contains(np.full(n_items, user), np.arange(n_items))
        unseen = ~seen.contains(np.full(n_items, user), np.arange(n_items))
        for negatives, out in ((unseen & cold_mask, cold_aucs_), (unseen, all_aucs)):
            if positive.any() and negatives.any():
                out.append(rank_auc(scores[row][positive], scores[row][negatives]))
    return {"cold_auc": float(np.mean(cold_aucs_)), "cold_vs_all_unseen_auc": float(np.mean(all_aucs)),
            "users": len(cold_aucs_)}


def rank_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(positive > negative), ties counted one half."""
    greater = (positive[:, None] > negative[None, :]).mean()
    ties = (positive[:, None] == negative[None, :]).mean()
    return float(greater + 0.5 * ties)


def cold_start_once(model_name: str, data_dir: str | None, seed: int, fraction: float,
                    overrides: list[str]) -> dict[str, Any]:
    flags = [f'data.data_dir="{data_dir}"'] if data_dir else []
    config = ExperimentConfig.from_dict(
        apply_overrides(read_toml(CONFIGS / f"{model_name}.toml"), flags + overrides))
    log = load_interactions(config.data)
    split = split_log(log, config.data.split)
    n_items = split.train.n_items
    cold = np.sort(np.random.default_rng(seed).choice(n_items, size=round(fraction * n_items), replace=False))
    warm = np.setdiff1d(np.arange(n_items), cold)
    warm_parts = warm_split(split, warm)
    with seeded(config.train.seed):
        trained = build_model(model_name, CatalogInfo.from_log(warm_parts.train), config.model.options)
    started = time.perf_counter()
    result = train_model(trained, warm_parts, config.train, config.evaluation)
    seconds = time.perf_counter() - started
    # Each user's warm training history, in the full catalogue's ids.
    history = split.train.select(~np.isin(split.train.item_ids, cold))
    # The catalogue of the warm history: a cold item's training count is 0, as for a new item.
    with seeded(config.train.seed + 1):
        full = build_model(model_name, CatalogInfo.from_log(history), config.model.options)
    grow_catalogue(trained, full, warm)
    full.eval()
    withheld_parts = [part.select(np.isin(part.item_ids, cold)) for part in (split.train, split.valid, split.test)]
    withheld = SeenItems.from_logs(*withheld_parts)
    users = np.unique(np.concatenate([part.user_ids for part in withheld_parts]))
    with torch.no_grad():
        scores = full.score(users, history).numpy()
    aucs = cold_aucs(scores, users, cold, withheld, SeenItems.from_logs(split.train, split.valid, split.test))
    return {"model": model_name, "seed": seed, "cold_items": len(cold), "warm_items": len(warm),
            "withheld_interactions": int(sum(part.n_interactions for part in withheld_parts)),
            "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "train_seconds": seconds,
            "warm_test_full_ndcg@10": result.test["full/ndcg@10"], **aucs}


def cold_start(args: argparse.Namespace) -> int:
    rows = []
    for model_name in args.models:
        for seed in args.seeds:
            row = cold_start_once(model_name, args.data_dir, seed, args.fraction, args.set)
            print(json.dumps(row), flush=True)
            rows.append(row)
    summary = {}
    for model_name in args.models:
        mine = [row for row in rows if row["model"] == model_name]
        summary[model_name] = {key: [float(np.mean([row[key] for row in mine])),
                                     float(np.std([row[key] for row in mine]))]
                               for key in ("cold_auc", "cold_vs_all_unseen_auc", "warm_test_full_ndcg@10")}
    write_report(Path(args.output), "model-zoo-cold-start", {"fraction": args.fraction, "results": rows,
                                                             "mean_std": summary}, args.threads)
    print("| model | seed | cold items | withheld interactions | users | cold AUC | cold vs all-unseen AUC "
          "| warm test full NDCG@10 | epochs (best) | train s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['model']} | {row['seed']} | {row['cold_items']} | {row['withheld_interactions']} "
              f"| {row['users']} | {row['cold_auc']:.3f} | {row['cold_vs_all_unseen_auc']:.3f} "
              f"| {row['warm_test_full_ndcg@10']:.4f} | {row['epochs_run']} ({row['best_epoch']}) "
              f"| {row['train_seconds']:.0f} |")
    for model_name, values in summary.items():
        print(f"{model_name}: cold AUC {values['cold_auc'][0]:.3f} +- {values['cold_auc'][1]:.3f}, "
              f"vs all unseen {values['cold_vs_all_unseen_auc'][0]:.3f} +- {values['cold_vs_all_unseen_auc'][1]:.3f}")
    return 0


# -- tables ------------------------------------------------------------------------------------
def table(args: argparse.Namespace) -> int:
    from simulations.benchmarks.centralized_baselines import markdown_table

    rows: dict[tuple[str, str], dict] = {}
    for path in args.files:
        for row in json.loads(Path(path).read_text())["results"]:
            rows[(row["dataset"], row["model"])] = row  # later files win
    order = ["popularity", "neumf", "sasrec", "gru4rec", "caser", "mult_dae", "mult_vae", "irgan", "content", "hybrid"]
    datasets = list(dict.fromkeys(dataset for dataset, _ in rows))
    ordered = [rows[(dataset, model)] for dataset in datasets for model in order if (dataset, model) in rows]
    print(markdown_table(ordered))
    return 0


def write_report(output: Path, name: str, body: dict[str, Any], threads: int) -> Path:
    output.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = output / f"{name}-{stamp}.json"
    path.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "threads": threads,
                                "environment": environment_record(), **body}, indent=2))
    print(f"wrote {path}")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    cold = commands.add_parser("cold-start", help="rank withheld (never trained) items on ML-100K")
    cold.add_argument("--data-dir", help="folder with the datasets (default: $FEDREC_DATA_DIR)")
    cold.add_argument("--models", nargs="+", default=["hybrid", "content"])
    cold.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds of the cold-item draw")
    cold.add_argument("--fraction", type=float, default=0.1, help="share of the catalogue made cold")
    cold.add_argument("--output", default="runs/benchmarks")
    cold.add_argument("--threads", type=int, default=2)
    cold.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    tables = commands.add_parser("table", help="one Markdown table from centralized_baselines JSON files")
    tables.add_argument("files", nargs="+")
    args = parser.parse_args()
    if args.command == "cold-start":
        torch.set_num_threads(args.threads)
        return cold_start(args)
    return table(args)


if __name__ == "__main__":
    sys.exit(main())
