"""Helpers shared by the model tests (imported by module name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from recsys_core.data.interactions import InteractionLog
from recsys_core.data.sampling import SeenItems
from recsys_core.data.splits import DatasetSplit, SplitConfig, split_log
from recsys_core.data.synthetic import SyntheticConfig, generate_synthetic
from recsys_core.metrics import EvaluationConfig
from recsys_core.models import CatalogInfo, Recommender, build_model
from recsys_core.training import TrainConfig, TrainingResult, seeded, train_model

EVALUATION = EvaluationConfig(cutoffs=(10,))


@functools.cache
def synthetic_split() -> DatasetSplit:
    """600 users, 150 items: big enough that every model clearly beats Popularity, small enough to train in seconds."""
    return split_log(generate_synthetic(SyntheticConfig(n_users=600, n_items=150, seed=3)), SplitConfig())


@functools.cache
def popularity_ndcg() -> float:
    """Popularity's test NDCG@10 on :func:`synthetic_split`."""
    return train("popularity", synthetic_split())[1].test["full/ndcg@10"]


def train(
    name: str, split: DatasetSplit, options: dict[str, Any] | None = None, **train_options: Any
) -> tuple[Recommender, TrainingResult]:
    with seeded(0):
        model = build_model(name, CatalogInfo.from_log(split.train), options or {})
    config = TrainConfig(**{"epochs": 8, "batch_size": 128, "learning_rate": 3e-3, **train_options})
    return model, train_model(model, split, config, EVALUATION)


def walk_split(n_users: int = 200, n_items: int = 50, length: int = 12) -> DatasetSplit:
    """Each user walks the catalogue in steps of one from a random start: only order predicts the next item."""
    generator = np.random.default_rng(0)
    starts = generator.integers(0, n_items, n_users)
    items = (starts[:, None] + np.arange(length)[None, :]) % n_items
    log = InteractionLog.from_original_ids(np.repeat(np.arange(n_users), length), items.reshape(-1),
                                           np.tile(np.arange(length), n_users))
    return split_log(log, SplitConfig())


def without_items(log: InteractionLog, items: np.ndarray) -> InteractionLog:
    """``log`` with every interaction of ``items`` removed (ids and features kept)."""
    return log.select(~np.isin(log.item_ids, items))


def hide_items(split: DatasetSplit, every: int = 5) -> tuple[InteractionLog, np.ndarray, np.ndarray]:
    """Makes every ``every``-th item new: ``(training log without them, renumbered; warm ids; new ids)``.

    In the returned log the new items do not exist at all (not even as sampled
    negatives), as for items added to the catalogue after training.
    """
    train = split.train
    new = np.arange(0, train.n_items, every)
    warm = np.setdiff1d(np.arange(train.n_items), new)
    renumbered = np.full(train.n_items, -1)
    renumbered[warm] = np.arange(len(warm))
    keep = renumbered[train.item_ids] >= 0
    assert train.item_features is not None
    log = InteractionLog.from_arrays(
        train.user_ids[keep], renumbered[train.item_ids[keep]], train.timestamps[keep], None,
        train.user_map, train.item_map.subset(warm), item_features=train.item_features.subset(warm),
    )
    return log, warm, new


def grow_catalogue(trained: Recommender, full: Recommender, warm: np.ndarray) -> None:
    """Loads ``trained`` (sized for the warm items) into ``full``: item-indexed rows go to the warm
    items, and the new items' rows keep ``full``'s initial values, i.e. are never trained."""
    state = full.state_dict()
    for key, value in trained.state_dict().items():
        if value.shape == state[key].shape:
            state[key] = value
        else:
            state[key][warm] = value
    full.load_state_dict(state)


def new_item_auc(scores: np.ndarray, users: np.ndarray, new: np.ndarray, split: DatasetSplit) -> float:
    """Mean over users of P(a new item the user took > a new item they never took), from ``[users, new]`` scores."""
    taken = SeenItems(split.train.user_ids, split.train.item_ids, split.train.n_items)
    seen = SeenItems.from_logs(split.train, split.valid, split.test)
    aucs = []
    for row, user in enumerate(users):
        positive = taken.contains(np.full(len(new), user), new)
        negative = ~seen.contains(np.full(len(new), user), new)
        if positive.any() and negative.any():
            aucs.append((scores[row][positive][:, None] > scores[row][negative][None, :]).mean())
    return float(np.mean(aucs))
