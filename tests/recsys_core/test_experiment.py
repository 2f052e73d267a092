"""What fedrec train writes: strict JSON under every split."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from recsys_core.errors import ConfigError
from recsys_core.experiment import ExperimentConfig, run_experiment


def strict_loads(text: str):
    def refuse(constant: str):
        raise ValueError(f"not strict JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def tiny(tmp_path: Path, split: dict) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "data": {"dataset": "synthetic", "synthetic": {"n_users": 60, "n_items": 50, "seed": 2}, "split": split},
        "model": {"name": "neumf", "options": {"gmf_dim": 8, "mlp_layers": [16, 8]}},
        "train": {"epochs": 1},
        "output_dir": str(tmp_path),
    })


@pytest.mark.parametrize("method", ["random_holdout", "leave_one_out"])
def test_metrics_and_history_are_strict_json_with_every_metric_a_number(tmp_path: Path, method: str) -> None:
    result = run_experiment(tiny(tmp_path, {"method": method}))
    metrics = strict_loads((result.run_directory / "metrics.json").read_text())
    history = [strict_loads(line) for line in (result.run_directory / "history.jsonl").read_text().splitlines()]
    for values in (metrics["validation"], metrics["test"], history[0]["validation"]):
        assert "sampled/ndcg@10" in values
        for name, value in values.items():
            assert math.isfinite(value) and 0.0 <= value <= 1.0, name


def test_an_empty_validation_set_is_a_clear_error_not_a_nan(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="the validation set is empty.*valid_fraction is above 0"):
        run_experiment(tiny(tmp_path, {"method": "random_holdout", "valid_fraction": 0.0}))
    assert not list(tmp_path.iterdir())


def test_popularity_on_the_same_test_users_sits_beside_the_model(tmp_path: Path) -> None:
    from recsys_core.data.sampling import SeenItems
    from recsys_core.models import CatalogInfo, build_model
    from recsys_core.training import evaluate_model

    result = run_experiment(tiny(tmp_path, {"method": "leave_one_out"}))
    metrics = strict_loads((result.run_directory / "metrics.json").read_text())
    popularity = build_model("popularity", CatalogInfo.from_log(result.split.train))
    popularity.fit_statistics(result.split.train)
    seen = SeenItems.from_logs(result.split.train, result.split.valid, result.split.test)
    expected = evaluate_model(popularity, result.split, "test", seen, ExperimentConfig().evaluation).means()
    assert metrics["popularity_test"] == pytest.approx(expected)
    assert set(metrics["test"]) <= set(metrics["popularity_test"])
