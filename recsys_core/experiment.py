"""A centralized experiment: load, preprocess, split, train, evaluate, record.

This is what ``fedrec train`` runs, and the baseline every federated run is compared with.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from recsys_core.config import dataclass_from_dict, dataclass_to_dict
from recsys_core.data.config import DataConfig
from recsys_core.data.loading import load_interactions
from recsys_core.data.splits import DatasetSplit, split_log
from recsys_core.errors import ConfigError
from recsys_core.metrics import EvaluationConfig
from recsys_core.models import CatalogInfo, Recommender, build_model, model_class, warn_if_weights_ignored
from recsys_core.models.base import num_parameters
from recsys_core.run_records import environment_record, new_run_directory, strict_json_dumps, write_json
from recsys_core.training import EpochReport, TrainConfig, TrainingResult, popularity_test_metrics, seeded, train_model


@dataclass(frozen=True)
class ModelSection:
    """The model's registered name and its hyper-parameters (see each model's config class)."""

    name: str = "neumf"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    output_dir: str = "runs"
    #: torch intra-op threads; 0 keeps torch's default.
    threads: int = 0

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExperimentConfig:
        return dataclass_from_dict(cls, values, finite=True).validate()

    def validate(self) -> ExperimentConfig:
        """Checks every section once, before any data is read."""
        self.data.validate()
        self.train.validate()
        self.evaluation.validate()
        from recsys_core.models.base import config_from_dict

        config_from_dict(model_class(self.model.name).config_class, self.model.options)
        if self.threads < 0:
            raise ConfigError("threads: must not be negative")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclass_to_dict(self)


@dataclass
class ExperimentResult:
    run_directory: Path
    model: Recommender
    split: DatasetSplit
    training: TrainingResult
    summary: dict[str, Any]


def run_experiment(
    config: ExperimentConfig,
    on_epoch: Callable[[EpochReport], None] | None = None,
    run_label: str | None = None,
) -> ExperimentResult:
    """Runs one centralized experiment and writes its run directory.

    The directory holds ``config.json``, ``metrics.json`` (validation and test, both
    protocols), ``history.jsonl`` (one line per epoch), ``environment.json``
    (package versions) and ``model.pt``.
    """
    config.validate()
    if config.threads:
        torch.set_num_threads(config.threads)
    started = time.perf_counter()
    log = load_interactions(config.data)
    warn_if_weights_ignored(config.model.name, log)
    split = split_log(log, config.data.split)
    load_seconds = time.perf_counter() - started
    with seeded(config.train.seed):
        model = build_model(config.model.name, CatalogInfo.from_log(split.train), config.model.options)
    training = train_model(model, split, config.train, config.evaluation, on_epoch)
    label = run_label or f"{config.data.dataset}-{config.model.name}"
    run_directory = new_run_directory(config.output_dir, label)
    summary = {
        "dataset": log.summary(),
        "model": {"name": config.model.name, "parameters": num_parameters(model),
                  "options": dataclass_to_dict(model.config)},
        "best_epoch": training.best_epoch,
        "epochs_run": training.epochs_run,
        "validation": training.best_validation,
        "test": training.test,
        "popularity_test": popularity_test_metrics(split, config.evaluation),
        "timings_seconds": {"load_and_split": load_seconds, "train": training.train_seconds,
                            "evaluation": training.evaluation_seconds},
    }
    write_json(run_directory / "config.json", config.to_dict())
    write_json(run_directory / "metrics.json", summary)
    write_json(run_directory / "environment.json", environment_record())
    _write_history(run_directory / "history.jsonl", training.history)
    torch.save({"model": config.model.name, "options": dataclass_to_dict(model.config),
                "state_dict": model.state_dict()}, run_directory / "model.pt")
    return ExperimentResult(run_directory, model, split, training, summary)


def _write_history(path: Path, history: list[EpochReport]) -> None:
    lines = [strict_json_dumps({"epoch": report.epoch, "train_loss": report.train_loss, "seconds": report.seconds,
                                "validation": report.validation}, f"{path}, epoch {report.epoch}") + "\n"
             for report in history]
    with path.open("w", encoding="utf-8") as stream:
        stream.writelines(lines)

