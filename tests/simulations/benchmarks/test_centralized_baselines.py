"""The centralized benchmark's per-user output: what paired_comparison reads, equal to the run's test metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from simulations.benchmarks.centralized_baselines import run_one
from simulations.benchmarks.paired_comparison import per_device_values

CONFIG = """
[data]
dataset = "synthetic"
[data.synthetic]
n_users = 60
n_items = 40
[model]
name = "content"
[train]
epochs = 2
"""


def test_per_user_output_matches_the_test_metrics(tmp_path: Path) -> None:
    config = tmp_path / "synthetic-content.toml"
    config.write_text(CONFIG)
    row = run_one(config, None, tmp_path / "runs", [], per_user_output=tmp_path / "users")
    users = json.loads((tmp_path / "users" / "synthetic-content.json").read_text())
    assert len(users) == 60 and all(metrics["users"] == 1 for metrics in users.values())
    ndcg = per_device_values(tmp_path / "users" / "synthetic-content.json", "full/ndcg@10")
    assert np.mean(list(ndcg.values())) == pytest.approx(row["test"]["full/ndcg@10"])
    sampled = per_device_values(tmp_path / "users" / "synthetic-content.json", "sampled/hr@10")
    assert set(sampled.values()) <= {0.0, 1.0} and np.mean(list(sampled.values())) == pytest.approx(
        row["test"]["sampled/hr@10"])
