"""The local training loop shared by the centralized trainer and every federated client.

:func:`run_local_epochs` is the loop a device runs on its own rows; :func:`train_model`
wraps it with validation, early stopping on validation NDCG@10 and a final test.
Every random draw comes from the seed in :class:`TrainConfig`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from recsys_core.data.interactions import InteractionLog
from recsys_core.data.sampling import SeenItems
from recsys_core.data.splits import DatasetSplit
from recsys_core.errors import ConfigError, FedrecError
from recsys_core.evaluation import evaluate_ranking, require_an_unseen_item
from recsys_core.metrics import EvaluationConfig, MetricSums
from recsys_core.models.base import Recommender

OptimizerName = Literal["adam", "adagrad", "sgd"]


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained: epochs, batches, optimiser, early stopping and the seed."""

    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    optimizer: OptimizerName = "adam"
    #: Validations without improvement before stopping; 0 trains for all epochs.
    patience: int = 5
    #: Validate every this many epochs.
    eval_every: int = 1
    validation_metric: str = "full/ndcg@10"
    seed: int = 0

    def validate(self) -> TrainConfig:
        for name in ("epochs", "batch_size", "eval_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name}: must be positive, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ConfigError(f"train.learning_rate: must be positive, got {self.learning_rate}")
        if self.weight_decay < 0 or self.patience < 0:
            raise ConfigError("train.weight_decay and train.patience must not be negative")
        if self.seed < 0:  # numpy's SeedSequence takes non-negative integers only
            raise ConfigError(f"train.seed: must not be negative, got {self.seed}")
        if self.optimizer not in ("adam", "adagrad", "sgd"):
            raise ConfigError(f"train.optimizer: unknown {self.optimizer!r}; use adam, adagrad or sgd")
        return self


@dataclass
class EpochReport:
    """What one epoch did; ``validation`` is empty on epochs without validation."""

    epoch: int
    train_loss: float
    seconds: float
    validation: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainingResult:
    epochs_run: int
    best_epoch: int
    best_validation: dict[str, float]
    test: dict[str, float]
    history: list[EpochReport]
    train_seconds: float
    evaluation_seconds: float


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seeds torch inside the block and restores the caller's generator state afterwards."""
    with torch.random.fork_rng(devices=[]):
        # The CPU generator alone, the one fork_rng restores: torch.manual_seed also seeds every
        # accelerator backend, about 1.5 ms a call, several times per simulated device.
        torch.default_generator.manual_seed(seed)
        yield


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Runs the block with ``count`` intra-op threads and restores the caller's count afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def make_optimizer(
    parameters: Iterable[torch.nn.Parameter], name: OptimizerName, learning_rate: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """The named optimiser over ``parameters``."""
    trainable = [parameter for parameter in parameters if parameter.requires_grad]
    if name == "adagrad":
        return torch.optim.Adagrad(trainable, lr=learning_rate, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(trainable, lr=learning_rate, weight_decay=weight_decay)
    return torch.optim.Adam(trainable, lr=learning_rate, weight_decay=weight_decay)


def run_local_epochs(
    model: Recommender,
    log: InteractionLog,
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
    epochs: int,
    batch_size: int,
    generator: np.random.Generator,
    regularizer: Callable[[], torch.Tensor] | None = None,
    auxiliary_optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
) -> list[float]:
    """Trains ``model`` on ``log`` for ``epochs``; returns the mean per-sample loss of each epoch.

    Fresh negatives are drawn every epoch. The same loop runs centrally and on a device;
    a device passes one optimiser for shared and one for private parameters, and FedProx
    passes its proximal term as ``regularizer`` (added to every batch's mean loss).

    A model with an auxiliary phase (a GAN) also takes its auxiliary steps after every
    per-sample step (:meth:`~recsys_core.models.base.Recommender.take_auxiliary_steps`),
    with ``auxiliary_optimizer`` or, when that is None, with ``optimizer``. Plain
    optimisers may serve both phases: each phase leaves the other's gradients unset,
    and Adam, Adagrad and SGD skip parameters without a gradient.
    A DP optimiser may not (it has no per-sample gradients in the auxiliary step):
    under DP pass plain optimisers over ``model.auxiliary_parameters()`` here.
    """
    optimizers = [optimizer] if isinstance(optimizer, torch.optim.Optimizer) else list(optimizer)
    auxiliary_optimizers = optimizers if auxiliary_optimizer is None else (
        [auxiliary_optimizer] if isinstance(auxiliary_optimizer, torch.optim.Optimizer) else list(auxiliary_optimizer)
    )
    model.train()
    losses = []
    for _ in range(epochs):
        samples = model.training_samples(log, generator)
        n_samples = len(next(iter(samples.values()))) if samples else 0
        order = torch.from_numpy(generator.permutation(n_samples))
        total, count = 0.0, 0
        for start in range(0, n_samples, batch_size):
            index = order[start : start + batch_size]
            batch = {name: values[index] for name, values in samples.items()}
            per_sample = model.per_sample_loss(batch)
            for each in optimizers:
                each.zero_grad(set_to_none=True)
            loss = per_sample.mean() if regularizer is None else per_sample.mean() + regularizer()
            loss.backward()
            for each in optimizers:
                each.step()
            model.take_auxiliary_steps(auxiliary_optimizers)
            total += float(per_sample.detach().sum())
            count += len(index)
        losses.append(total / max(count, 1))
    return losses


def evaluate_model(
    model: Recommender,
    split: DatasetSplit,
    part: Literal["valid", "test"],
    seen: SeenItems,
    config: EvaluationConfig,
    per_user: dict[int, dict[str, float]] | None = None,
) -> MetricSums:
    """Ranks the held-out items of ``part`` (``valid`` or ``test``) under both protocols.

    ``per_user``, when given, receives each user's metrics (see :func:`evaluate_ranking`).
    """
    history = split.history_before(part)
    targets = split.valid if part == "valid" else split.test
    model.eval()
    with torch.no_grad():
        return evaluate_ranking(lambda users: model.score(users, history), targets, history, seen, config,
                                per_user)


def popularity_test_metrics(split: DatasetSplit, config: EvaluationConfig) -> dict[str, float]:
    """Popularity's test metrics on every test user of ``split``: the floor printed beside every model.

    Fitted on the whole training log, so in a private run it is a reference the evaluator
    holds (the one who has the data), not something the run released.
    """
    from recsys_core.models import CatalogInfo, build_model

    model = build_model("popularity", CatalogInfo.from_log(split.train))
    model.fit_statistics(split.train)
    seen = SeenItems.from_logs(split.train, split.valid, split.test)
    return evaluate_model(model, split, "test", seen, config).means()


def require_evaluable(split: DatasetSplit, validation: bool = True) -> None:
    """Refuses a split with nothing to evaluate: an empty test (or, with ``validation``, validation) part,
    or a user who has seen every item.

    A part without held-out rows has no metric to report, and early stopping nothing to watch.
    """
    for part, log in (("validation", split.valid), ("test", split.test)):
        if log.n_interactions == 0 and (validation or part == "test"):
            fraction = ", and under random_holdout only when data.split.valid_fraction is above 0" \
                if part == "validation" else ""
            raise ConfigError(
                f"data.split: the {part} set is empty, so there is nothing to evaluate. A user is held out only "
                f"with at least data.split.min_interactions_to_evaluate interactions (3 at the least){fraction}: "
                "use a dataset with longer histories or change those settings"
            )
    require_an_unseen_item(SeenItems.from_logs(split.train, split.valid, split.test), split.train.user_map)


def train_model(
    model: Recommender,
    split: DatasetSplit,
    train_config: TrainConfig,
    evaluation_config: EvaluationConfig = EvaluationConfig(),
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> TrainingResult:
    """Trains centrally with early stopping on validation, then tests the best model."""
    train_config.validate()
    evaluation_config.validate()
    require_evaluable(split)
    seen = SeenItems.from_logs(split.train, split.valid, split.test)
    history: list[EpochReport] = []
    evaluation_seconds = 0.0
    started = time.perf_counter()
    best_state, best_epoch, best_validation = None, 0, {}
    if not model.trains_with_gradients:
        model.fit_statistics(split.train)
        best_validation = evaluate_model(model, split, "valid", seen, evaluation_config).means()
    else:
        generator = np.random.default_rng(train_config.seed)
        optimizer = make_optimizer(model.parameters(), train_config.optimizer, train_config.learning_rate,
                                   train_config.weight_decay)
        best_score, stale = -np.inf, 0
        with seeded(train_config.seed):
            for epoch in range(1, train_config.epochs + 1):
                epoch_started = time.perf_counter()
                loss = run_local_epochs(model, split.train, optimizer, 1, train_config.batch_size, generator)[0]
                if not math.isfinite(loss):
                    raise FedrecError(f"training diverged: the train loss of epoch {epoch} is {loss}; lower "
                                      f"train.learning_rate (now {train_config.learning_rate})")
                report = EpochReport(epoch, loss, time.perf_counter() - epoch_started)
                if epoch % train_config.eval_every == 0 or epoch == train_config.epochs:
                    evaluation_started = time.perf_counter()
                    report.validation = evaluate_model(model, split, "valid", seen, evaluation_config).means()
                    evaluation_seconds += time.perf_counter() - evaluation_started
                    score = report.validation.get(train_config.validation_metric)
                    if score is None:
                        raise ConfigError(f"train.validation_metric: {train_config.validation_metric!r} is not "
                                          f"computed; choose one of {', '.join(report.validation)}")
                    if score > best_score:
                        best_score, best_epoch, stale = score, epoch, 0
                        best_validation = report.validation
                        best_state = copy.deepcopy(model.state_dict())
                    else:
                        stale += 1
                history.append(report)
                if on_epoch is not None:
                    on_epoch(report)
                if train_config.patience and stale >= train_config.patience:
                    break
        if best_state is not None:
            model.load_state_dict(best_state)
    train_seconds = time.perf_counter() - started - evaluation_seconds
    evaluation_started = time.perf_counter()
    test = evaluate_model(model, split, "test", seen, evaluation_config).means()
    evaluation_seconds += time.perf_counter() - evaluation_started
    return TrainingResult(
        epochs_run=len(history),
        best_epoch=best_epoch,
        best_validation=best_validation,
        test=test,
        history=history,
        train_seconds=train_seconds,
        evaluation_seconds=evaluation_seconds,
    )
