"""Centralized baselines: every config in simulations/configs/*/centralized/, side by side in one run.

Usage (from the repository root):

    python -m simulations.benchmarks.centralized_baselines --data-dir ../shared/datasets \
        [--configs simulations/configs/ml-100k/centralized/*.toml] [--output runs/benchmarks] \
        [--per-user-output runs/central-users]

Prints a Markdown table (the one in docs/benchmarks.md) with each learned model's
full-ranking NDCG@10 as a ratio to Popularity's on the same dataset, and writes the
same numbers to ``<output>/centralized-<UTC time>.json``. ``--per-user-output DIR``
also writes each test user's metrics to ``DIR/<dataset>-<model>.json`` (keyed by the
dataset's user id), for ``simulations.benchmarks.paired_comparison``.
"""

from __future__ import annotations

import argparse
import glob
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from recsys_core.config import apply_overrides, read_toml
from recsys_core.data.sampling import SeenItems
from recsys_core.experiment import ExperimentConfig, ExperimentResult, run_experiment
from recsys_core.metrics import EvaluationConfig
from recsys_core.run_records import environment_record
from recsys_core.training import evaluate_model

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]


def write_per_user_test(result: ExperimentResult, evaluation: EvaluationConfig, path: Path) -> None:
    """Each test user's metrics, in ``paired_comparison``'s format (a unit of one user)."""
    split = result.split
    per_user: dict[int, dict[str, float]] = {}
    sums = evaluate_model(result.model, split, "test", SeenItems.from_logs(split.train, split.valid, split.test),
                          evaluation, per_user)
    if abs(sums.means()["full/ndcg@10"] - result.training.test["full/ndcg@10"]) > 1e-9:
        raise RuntimeError(f"{path.stem}: re-testing per user gave full NDCG@10 {sums.means()['full/ndcg@10']}, "
                           f"training's test gave {result.training.test['full/ndcg@10']}")
    original_ids = split.test.user_map.original_ids
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({str(original_ids[user]): {"users": 1, **metrics}
                                for user, metrics in per_user.items()}))


def run_one(path: Path, data_dir: str | None, output: Path, overrides: list[str],
            per_user_output: Path | None = None) -> dict:
    flags = [f'output_dir="{output / "runs"}"'] + ([f'data.data_dir="{data_dir}"'] if data_dir else [])
    config = ExperimentConfig.from_dict(apply_overrides(read_toml(path), flags + overrides))
    started = time.perf_counter()
    result = run_experiment(config, on_epoch=lambda report: print(
        f"  {path.stem} epoch {report.epoch}: loss {report.train_loss:.4f}"
        + (f" valid ndcg@10 {report.validation['full/ndcg@10']:.4f}"
           f" sampled hr@10 {report.validation['sampled/hr@10']:.4f}" if report.validation else ""),
        flush=True))
    if per_user_output is not None:
        write_per_user_test(result, config.evaluation,
                            per_user_output / f"{config.data.dataset}-{config.model.name}.json")
    return {
        "config": str(path.relative_to(REPOSITORY_ROOT)) if path.is_relative_to(REPOSITORY_ROOT) else str(path),
        "dataset": config.data.dataset,
        "model": config.model.name,
        "sampled_negatives": config.evaluation.sampled_negatives,
        "best_epoch": result.training.best_epoch,
        "epochs_run": result.training.epochs_run,
        "train_seconds": result.training.train_seconds,
        "wall_seconds": time.perf_counter() - started,
        "test": result.training.test,
        "run_directory": str(result.run_directory),
    }


def markdown_table(rows: list[dict]) -> str:
    popularity = {row["dataset"]: row["test"]["full/ndcg@10"] for row in rows if row["model"] == "popularity"}
    lines = [
        "| dataset | model | full NDCG@10 | full HR@10 | x Popularity (NDCG@10) | sampled HR@10 | sampled NDCG@10 "
        "| negatives | epochs (best) | train s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        test = row["test"]
        baseline = popularity.get(row["dataset"])
        ratio = f"{test['full/ndcg@10'] / baseline:.2f}" if baseline else "n/a"
        lines.append(
            f"| {row['dataset']} | {row['model']} | {test['full/ndcg@10']:.4f} | {test['full/hr@10']:.4f} | {ratio} "
            f"| {test['sampled/hr@10']:.4f} | {test['sampled/ndcg@10']:.4f} | {row['sampled_negatives']} "
            f"| {row['epochs_run']} ({row['best_epoch']}) | {row['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="folder with the datasets (default: $FEDREC_DATA_DIR)")
    parser.add_argument("--configs", nargs="*", help="config files (default: simulations/configs/*/centralized/*.toml)")
    parser.add_argument("--output", default="runs/benchmarks", help="where JSON results and run folders go")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every config")
    parser.add_argument("--per-user-output", type=Path, metavar="DIR",
                        help="write each test user's metrics to DIR/<dataset>-<model>.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    default_configs = sorted(glob.glob(str(REPOSITORY_ROOT / "simulations/configs/*/centralized/*.toml")))
    paths = [Path(p) for p in (args.configs or default_configs)]
    output = Path(args.output)
    rows = []
    for path in paths:
        print(f"== {path}", flush=True)
        rows.append(run_one(path, args.data_dir, output, args.set, args.per_user_output))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    output.mkdir(parents=True, exist_ok=True)
    report = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
              "environment": environment_record(), "results": rows}
    (output / f"centralized-{stamp}.json").write_text(json.dumps(report, indent=2))
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
