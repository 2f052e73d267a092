"""The training loop learns, is deterministic, and stops early."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys_core import training
from recsys_core.data.interactions import InteractionLog
from recsys_core.data.splits import SplitConfig, split_log
from recsys_core.data.synthetic import SyntheticConfig, generate_synthetic
from recsys_core.errors import ConfigError, FedrecError
from recsys_core.metrics import EvaluationConfig
from recsys_core.models import CatalogInfo, build_model
from recsys_core.training import TrainConfig, make_optimizer, run_local_epochs, seeded, train_model

EVALUATION = EvaluationConfig(cutoffs=(10,))


@pytest.fixture(scope="module")
def split():
    return split_log(generate_synthetic(SyntheticConfig(n_users=300, n_items=200, seed=3)), SplitConfig())


def train(name: str, split, **train_options):
    with seeded(0):
        model = build_model(name, CatalogInfo.from_log(split.train),
                            {"sasrec": {"hidden_dim": 32, "max_length": 20}}.get(name, {}))
    config = TrainConfig(**{"epochs": 8, "batch_size": 128, "learning_rate": 3e-3, **train_options})
    return model, train_model(model, split, config, EVALUATION)


def test_learned_models_beat_popularity_on_synthetic(split) -> None:
    _, popularity = train("popularity", split)
    _, neumf = train("neumf", split)
    assert neumf.test["full/ndcg@10"] > 1.2 * popularity.test["full/ndcg@10"]


def test_sasrec_learns_a_sequential_pattern() -> None:
    # Each user walks the catalogue in steps of one from a random start: only order predicts the next item.
    generator = np.random.default_rng(0)
    n_users, n_items, length = 200, 50, 12
    starts = generator.integers(0, n_items, n_users)
    items = (starts[:, None] + np.arange(length)[None, :]) % n_items
    log = InteractionLog.from_original_ids(np.repeat(np.arange(n_users), length), items.reshape(-1),
                                           np.tile(np.arange(length), n_users))
    split = split_log(log, SplitConfig())
    _, popularity = train("popularity", split)
    _, sasrec = train("sasrec", split, epochs=30, patience=0, eval_every=10)
    assert popularity.test["full/hr@10"] < 0.4
    assert sasrec.test["full/hr@10"] > 0.9


def test_training_is_deterministic_under_a_seed(split) -> None:
    first_model, first = train("neumf", split, epochs=2)
    second_model, second = train("neumf", split, epochs=2)
    assert first.test == second.test
    for value, other in zip(first_model.state_dict().values(), second_model.state_dict().values()):
        assert torch.equal(value, other)


def test_early_stopping_keeps_the_best_epoch(split) -> None:
    _, result = train("neumf", split, epochs=40, patience=2, learning_rate=0.05)
    assert result.epochs_run < 40
    assert result.best_epoch == result.epochs_run - 2
    best = max(report.validation["full/ndcg@10"] for report in result.history)
    assert result.best_validation["full/ndcg@10"] == best


def test_local_epochs_reduce_the_loss(split) -> None:
    with seeded(1):
        model = build_model("neumf", CatalogInfo.from_log(split.train))
    optimizer = make_optimizer(model.parameters(), "adam", 1e-2)
    losses = run_local_epochs(model, split.train, optimizer, 3, 256, np.random.default_rng(0))
    assert losses[-1] < losses[0]


def test_invalid_train_config() -> None:
    with pytest.raises(ConfigError, match="train.epochs"):
        TrainConfig(epochs=0).validate()
    with pytest.raises(ConfigError, match="optimizer"):
        TrainConfig(optimizer="lbfgs").validate()  # type: ignore[arg-type]


def test_a_split_that_holds_nobody_out_is_a_clear_error() -> None:
    # Two interactions per user: under leave-one-out nobody is held out, so there is nothing to validate or test.
    log = InteractionLog.from_original_ids(np.repeat(np.arange(20), 2), np.arange(40) % 7, np.tile([0, 1], 20))
    with pytest.raises(ConfigError, match="the validation set is empty.*min_interactions_to_evaluate"):
        train("popularity", split_log(log, SplitConfig()))


def test_a_diverged_loss_stops_training_with_a_clear_error(split, monkeypatch) -> None:
    monkeypatch.setattr(training, "run_local_epochs", lambda *args, **kwargs: [float("nan")])
    with pytest.raises(FedrecError, match="training diverged: the train loss of epoch 1 is nan; lower "
                                          "train.learning_rate"):
        train("neumf", split, epochs=2)
